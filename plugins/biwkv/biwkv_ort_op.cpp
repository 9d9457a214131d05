// The Bi-WKV node of contract.json as an ONNX Runtime custom op on the CPU execution provider.
//
// Built against ONNX Runtime's C API header only (onnxruntime_c_api.h, not part of the repository)
// and loaded with SessionOptions.register_custom_ops_library(path): ONNX Runtime calls
// RegisterCustomOps, which adds the contract's domain with one op per k/v type (float32, float16)
// under the contract's op_type. The exported graphs then run unchanged, without a Python callback.
// Each node's kernel reads its "mode" attribute once, when ONNX Runtime creates it; a node without one
// (every node of contract version 1) computes HPCM_BIWKV_DEFAULT_MODE.
//
// HPCM_BIWKV_OP_TYPE, HPCM_BIWKV_DOMAIN, HPCM_BIWKV_MODE_NAMES and HPCM_BIWKV_DEFAULT_MODE come from
// contract.json at build time (hpcm.plugins.biwkv.contract.WKVContract.compile_definitions).

#include "biwkv_cpu.h"

#include "onnxruntime_c_api.h"

#include <cstdint>
#include <cstring>
#include <iterator>
#include <new>
#include <string>
#include <vector>

#ifndef HPCM_BIWKV_OP_TYPE
#error "define HPCM_BIWKV_OP_TYPE (contract.json op_type)"
#endif
#ifndef HPCM_BIWKV_DOMAIN
#error "define HPCM_BIWKV_DOMAIN (contract.json domain)"
#endif
#if !defined(HPCM_BIWKV_MODE_NAMES) || !defined(HPCM_BIWKV_DEFAULT_MODE)
#error "define HPCM_BIWKV_MODE_NAMES and HPCM_BIWKV_DEFAULT_MODE (contract.json modes, the mode attribute's default)"
#endif

namespace
{

// The op uses the version-16 layout of OrtCustomOp (CreateKernelV2 / KernelComputeV2, so errors
// reach the caller as statuses) and asks for the API of the same version, which every ONNX Runtime
// since 1.16 provides whatever the header's own ORT_API_VERSION.
constexpr uint32_t kApiVersion = 16;
constexpr size_t kInputs = 4; // w, u, k, v
enum Input : size_t
{
    kW = 0,
    kU = 1,
    kK = 2,
    kV = 3
};

constexpr char const* kModeNames[] = {HPCM_BIWKV_MODE_NAMES};
static_assert(std::size(kModeNames) == HPCM_BIWKV_MODE_COUNT, "contract.json lists the modes biwkv_mode.h numbers");

OrtApi const* gApi = nullptr;

OrtStatus* invalid(std::string const& message)
{
    return gApi->CreateStatus(ORT_INVALID_ARGUMENT, (std::string(HPCM_BIWKV_OP_TYPE ": ") + message).c_str());
}

struct TensorInfo
{
    ONNXTensorElementDataType type;
    std::vector<int64_t> dims;
};

OrtStatus* describe(OrtValue const* value, TensorInfo& info)
{
    OrtTensorTypeAndShapeInfo* shape = nullptr;
    if (OrtStatus* status = gApi->GetTensorTypeAndShape(value, &shape))
    {
        return status;
    }
    size_t rank = 0;
    OrtStatus* status = gApi->GetTensorElementType(shape, &info.type);
    if (status == nullptr)
    {
        status = gApi->GetDimensionsCount(shape, &rank);
    }
    if (status == nullptr)
    {
        info.dims.assign(rank, 0);
        status = gApi->GetDimensions(shape, info.dims.data(), rank);
    }
    gApi->ReleaseTensorTypeAndShapeInfo(shape);
    return status;
}

std::string dimsText(std::vector<int64_t> const& dims)
{
    std::string text = "(";
    for (size_t i = 0; i < dims.size(); ++i)
    {
        text += (i ? ", " : "") + std::to_string(dims[i]);
    }
    return text + ")";
}

void const* dataOf(OrtValue const* value, OrtStatus*& status)
{
    void* data = nullptr;
    // The C API has no const accessor before version 21; the data is only read.
    status = gApi->GetTensorMutableData(const_cast<OrtValue*>(value), &data);
    return data;
}

struct BiwkvOp : OrtCustomOp
{
    explicit BiwkvOp(ONNXTensorElementDataType dataType);
    ONNXTensorElementDataType dataType;
};

// What one node computes: its k/v type and mode.
struct BiwkvKernel
{
    ONNXTensorElementDataType dataType;
    int32_t mode;
};

// The node's mode: its "mode" attribute, or the contract's default where it has none.
OrtStatus* readMode(OrtKernelInfo const* info, int32_t& mode)
{
    std::string name = HPCM_BIWKV_DEFAULT_MODE;
    size_t size = 0;
    if (OrtStatus* absent = gApi->KernelInfoGetAttribute_string(info, "mode", nullptr, &size))
    {
        gApi->ReleaseStatus(absent);
    }
    else
    {
        name.assign(size, '\0');
        if (OrtStatus* status = gApi->KernelInfoGetAttribute_string(info, "mode", name.data(), &size))
        {
            return status;
        }
        name.resize(size > 0 ? size - 1 : 0); // size counts the terminating NUL
    }
    for (int32_t i = 0; i < HPCM_BIWKV_MODE_COUNT; ++i)
    {
        if (name == kModeNames[i])
        {
            mode = i;
            return nullptr;
        }
    }
    std::string known;
    for (char const* knownName : kModeNames)
    {
        known += (known.empty() ? "" : ", ") + std::string(knownName);
    }
    return invalid("unknown mode '" + name + "' (this library computes " + known + ")");
}

OrtStatus* ORT_API_CALL compute(void* opaque, OrtKernelContext* context)
{
    auto const* kernel = static_cast<BiwkvKernel const*>(opaque);
    OrtValue const* inputs[kInputs] = {};
    TensorInfo info[kInputs];
    for (size_t i = 0; i < kInputs; ++i)
    {
        if (OrtStatus* status = gApi->KernelContext_GetInput(context, i, &inputs[i]))
        {
            return status;
        }
        if (inputs[i] == nullptr)
        {
            return invalid("missing input " + std::to_string(i));
        }
        if (OrtStatus* status = describe(inputs[i], info[i]))
        {
            return status;
        }
    }
    std::vector<int64_t> const& kDims = info[kK].dims;
    if (kDims.size() != 3 || info[kV].dims != kDims)
    {
        return invalid("k and v must both be (B, C, T); got " + dimsText(kDims) + " and " + dimsText(info[kV].dims));
    }
    int64_t const B = kDims[0];
    int64_t const C = kDims[1];
    int64_t const T = kDims[2];
    for (size_t i : {kW, kU})
    {
        if (info[i].dims != std::vector<int64_t>{C})
        {
            return invalid(std::string(i == kW ? "w" : "u") + " must be (" + std::to_string(C) + ",); got "
                + dimsText(info[i].dims));
        }
    }
    if (T < 1)
    {
        return invalid("T must be at least 1");
    }
    OrtValue* output = nullptr;
    if (OrtStatus* status = gApi->KernelContext_GetOutput(context, 0, kDims.data(), kDims.size(), &output))
    {
        return status;
    }
    OrtStatus* status = nullptr;
    void const* data[kInputs];
    for (size_t i = 0; i < kInputs && status == nullptr; ++i)
    {
        data[i] = dataOf(inputs[i], status);
    }
    void* y = nullptr;
    if (status == nullptr)
    {
        status = gApi->GetTensorMutableData(output, &y);
    }
    if (status != nullptr)
    {
        return status;
    }
    auto const* w = static_cast<float const*>(data[kW]);
    auto const* u = static_cast<float const*>(data[kU]);
    int const rc = kernel->dataType == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
        ? hpcm_biwkv_cpu_f16(w, u, static_cast<uint16_t const*>(data[kK]), static_cast<uint16_t const*>(data[kV]),
            static_cast<uint16_t*>(y), B, C, T, kernel->mode, 0)
        : hpcm_biwkv_cpu_f32(w, u, static_cast<float const*>(data[kK]), static_cast<float const*>(data[kV]),
            static_cast<float*>(y), B, C, T, kernel->mode, 0);
    return rc == 0 ? nullptr : invalid("invalid sizes " + dimsText(kDims));
}

BiwkvOp::BiwkvOp(ONNXTensorElementDataType type)
    : OrtCustomOp{}
    , dataType(type)
{
    version = kApiVersion;
    CreateKernel = nullptr;
    CreateKernelV2
        = [](OrtCustomOp const* self, OrtApi const*, OrtKernelInfo const* info, void** kernel) -> OrtStatusPtr
    {
        int32_t mode = 0;
        if (OrtStatus* status = readMode(info, mode))
        {
            return status;
        }
        *kernel = new (std::nothrow) BiwkvKernel{static_cast<BiwkvOp const*>(self)->dataType, mode};
        return *kernel != nullptr ? nullptr : gApi->CreateStatus(ORT_FAIL, HPCM_BIWKV_OP_TYPE ": out of memory");
    };
    KernelComputeV2 = compute;
    KernelDestroy = [](void* kernel) { delete static_cast<BiwkvKernel*>(kernel); };
    GetName = [](OrtCustomOp const*) { return HPCM_BIWKV_OP_TYPE; };
    GetExecutionProviderType = [](OrtCustomOp const*) -> char const* { return "CPUExecutionProvider"; };
    GetInputTypeCount = [](OrtCustomOp const*) -> size_t { return kInputs; };
    GetInputType = [](OrtCustomOp const* self, size_t index)
    {
        return index == kW || index == kU ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                          : static_cast<BiwkvOp const*>(self)->dataType;
    };
    GetOutputTypeCount = [](OrtCustomOp const*) -> size_t { return 1; };
    GetOutputType = [](OrtCustomOp const* self, size_t) { return static_cast<BiwkvOp const*>(self)->dataType; };
    GetInputCharacteristic
        = [](OrtCustomOp const*, size_t) { return OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED; };
    GetOutputCharacteristic
        = [](OrtCustomOp const*, size_t) { return OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](OrtCustomOp const*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](OrtCustomOp const*) { return 1; };
    GetVariadicInputHomogeneity = [](OrtCustomOp const*) { return 1; };
    GetVariadicOutputMinArity = [](OrtCustomOp const*) { return 1; };
    GetVariadicOutputHomogeneity = [](OrtCustomOp const*) { return 1; };
}

BiwkvOp gFloatOp(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
BiwkvOp gHalfOp(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);

} // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(
    OrtSessionOptions* options, OrtApiBase const* apiBase)
{
    gApi = apiBase->GetApi(kApiVersion);
    if (gApi == nullptr)
    {
        // Version 1 exists in every ONNX Runtime and can still say why.
        return apiBase->GetApi(1)->CreateStatus(
            ORT_FAIL, HPCM_BIWKV_OP_TYPE ": this library needs ONNX Runtime 1.16 or newer (C API version 16)");
    }
    // Sessions reference the domain until they end; it lives as long as the library.
    static OrtCustomOpDomain* domain = nullptr;
    if (domain == nullptr)
    {
        if (OrtStatus* status = gApi->CreateCustomOpDomain(HPCM_BIWKV_DOMAIN, &domain))
        {
            return status;
        }
        for (BiwkvOp* op : {&gFloatOp, &gHalfOp})
        {
            if (OrtStatus* status = gApi->CustomOpDomain_Add(domain, op))
            {
                return status;
            }
        }
    }
    return gApi->AddCustomOpDomain(options, domain);
}
