// PyTorch entry point of the Bi-WKV CUDA kernel, JIT-built by cuda.py and registered there as the
// CUDA kernel of the custom op hpcm::biwkv.

#include "biwkv_kernel.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

namespace
{

at::Tensor biwkvForward(
    at::Tensor const& w, at::Tensor const& u, at::Tensor const& k, at::Tensor const& v, int64_t modeIndex)
{
    TORCH_CHECK(modeIndex >= 0 && modeIndex < HPCM_BIWKV_MODE_COUNT, "biwkv (CUDA): unknown mode index ", modeIndex);
    HpcmBiwkvMode const mode = static_cast<HpcmBiwkvMode>(modeIndex);
    TORCH_CHECK(k.is_cuda() && v.is_cuda() && w.is_cuda() && u.is_cuda(), "biwkv (CUDA): all inputs must be CUDA tensors");
    TORCH_CHECK(w.device() == k.device() && u.device() == k.device() && v.device() == k.device(),
        "biwkv (CUDA): all inputs must be on one device");
    TORCH_CHECK(k.dim() == 3 && k.sizes() == v.sizes(), "biwkv (CUDA): k and v must both be (B, C, T); got ",
        k.sizes(), " and ", v.sizes());
    TORCH_CHECK(k.scalar_type() == v.scalar_type()
            && (k.scalar_type() == at::kFloat || k.scalar_type() == at::kHalf),
        "biwkv (CUDA): k and v must both be float32 or both float16");
    TORCH_CHECK(k.size(2) >= 1, "biwkv (CUDA): T must be at least 1");
    TORCH_CHECK(w.dim() == 1 && u.dim() == 1 && w.size(0) == k.size(1) && u.size(0) == k.size(1),
        "biwkv (CUDA): w and u must be (C,) with C = ", k.size(1));

    c10::cuda::CUDAGuard const guard(k.device());
    at::Tensor const wc = w.to(at::kFloat).contiguous();
    at::Tensor const uc = u.to(at::kFloat).contiguous();
    at::Tensor const kc = k.contiguous();
    at::Tensor const vc = v.contiguous();
    at::Tensor y = at::empty_like(kc, at::MemoryFormat::Contiguous);
    int64_t const B = kc.size(0);
    int64_t const C = kc.size(1);
    int64_t const T = kc.size(2);
    size_t const workspaceBytes = hpcm_biwkv_workspace_bytes(B, C, T, mode);
    // From PyTorch's caching allocator, so no cudaMalloc happens per call.
    at::Tensor workspace = at::empty({static_cast<int64_t>(workspaceBytes)}, kc.options().dtype(at::kByte));
    HpcmBiwkvDtype const dtype = kc.scalar_type() == at::kHalf ? HpcmBiwkvDtype::kFloat16 : HpcmBiwkvDtype::kFloat32;
    cudaError_t const status = hpcm_biwkv_forward(wc.data_ptr<float>(), uc.data_ptr<float>(), kc.data_ptr(),
        vc.data_ptr(), y.data_ptr(), B, C, T, dtype, mode, workspaceBytes > 0 ? workspace.data_ptr() : nullptr,
        workspaceBytes, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(status == cudaSuccess, "biwkv (CUDA): kernel launch failed: ", cudaGetErrorString(status));
    return y;
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("forward", &biwkvForward,
        "Bi-WKV forward y = biwkv(w, u, k, v) in the mode of that index (contract.json's modes) on the current "
        "CUDA stream",
        pybind11::arg("w"), pybind11::arg("u"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("mode"));
}
