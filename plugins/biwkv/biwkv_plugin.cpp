#include "biwkv_plugin.h"

#include "biwkv_kernel.h"

#include <atomic>
#include <exception>
#include <string>

namespace hpcm
{
namespace plugin
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::TensorFormat;

constexpr char const* kPluginName = HPCM_BIWKV_PLUGIN_NAME;
constexpr char const* kPluginVersion = HPCM_BIWKV_PLUGIN_VERSION;
constexpr char const* kPluginNamespace = HPCM_BIWKV_PLUGIN_NAMESPACE;

// Set by TensorRT through setLoggerFinder when it loads the library; a statically registered
// build may never receive one, so every use tolerates null.
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

void logError(std::string const& message) noexcept
{
    try
    {
        nvinfer1::ILoggerFinder* const finder = gLoggerFinder.load();
        nvinfer1::ILogger* const logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(nvinfer1::ILogger::Severity::kERROR, (std::string(kPluginName) + ": " + message).c_str());
        }
    }
    catch (...)
    {
    }
}

bool isLinear(nvinfer1::PluginTensorDesc const& desc)
{
    return desc.format == TensorFormat::kLINEAR;
}

bool validCounts(int32_t nbInputs, int32_t nbOutputs)
{
    return nbInputs == BiwkvPlugin::kNbInputs && nbOutputs == BiwkvPlugin::kNbOutputs;
}

// Same shape rules as hpcm.plugins.biwkv.op._check_inputs; -1 dimensions are still unknown at build time.
bool compatibleDims(nvinfer1::Dims const& w, nvinfer1::Dims const& u, nvinfer1::Dims const& k, nvinfer1::Dims const& v)
{
    if (w.nbDims != 1 || u.nbDims != 1 || k.nbDims != 3 || v.nbDims != 3)
    {
        return false;
    }
    auto const agree = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
    return agree(w.d[0], k.d[1]) && agree(u.d[0], k.d[1]) && agree(k.d[0], v.d[0]) && agree(k.d[1], v.d[1])
        && agree(k.d[2], v.d[2]);
}

} // namespace

nvinfer1::IPluginCapability* BiwkvPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* BiwkvPlugin::clone() noexcept
{
    try
    {
        return new BiwkvPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* BiwkvPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* BiwkvPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* BiwkvPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t BiwkvPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || !validCounts(nbInputs, nbOutputs)
        || !compatibleDims(in[kInputW].desc.dims, in[kInputU].desc.dims, in[kInputK].desc.dims, in[kInputV].desc.dims))
    {
        logError("expects inputs w, u of shape (C,) and k, v of shape (B, C, T), and one output");
        return -1;
    }
    return 0;
}

int32_t BiwkvPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || !validCounts(nbInputs, nbOutputs))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kInputK];
    return 0;
}

int32_t BiwkvPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || !validCounts(nbInputs, nbOutputs) || inputs[kInputK].nbDims != 3)
    {
        logError("k must have rank 3 (B, C, T)");
        return -1;
    }
    outputs[0] = inputs[kInputK];
    return 0;
}

bool BiwkvPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || !validCounts(nbInputs, nbOutputs) || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (!isLinear(desc))
    {
        return false;
    }
    switch (pos)
    {
    case kInputW:
    case kInputU: return desc.type == DataType::kFLOAT;
    case kInputK: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    default: return desc.type == inOut[kInputK].desc.type;
    }
}

int32_t BiwkvPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

size_t BiwkvPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept
{
    if (inputs == nullptr || !validCounts(nbInputs, nbOutputs) || inputs[kInputK].max.nbDims != 3)
    {
        return 0;
    }
    nvinfer1::Dims const& most = inputs[kInputK].max;
    return hpcm_biwkv_workspace_bytes(most.d[0], most.d[1], most.d[2]);
}

int32_t BiwkvPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || !validCounts(nbInputs, nbOutputs)
        || !compatibleDims(in[kInputW].dims, in[kInputU].dims, in[kInputK].dims, in[kInputV].dims))
    {
        logError("runtime shapes disagree: need w, u (C,) and k, v (B, C, T) with the same C");
        return -1;
    }
    return 0;
}

int32_t BiwkvPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr || inputDesc[kInputK].dims.nbDims != 3)
    {
        logError("enqueue called without (B, C, T) tensors");
        return -1;
    }
    // Shapes are re-read on every call: with dynamic shapes they change between enqueues.
    nvinfer1::Dims const& dims = inputDesc[kInputK].dims;
    int64_t const B = dims.d[0];
    int64_t const C = dims.d[1];
    int64_t const T = dims.d[2];
    HpcmBiwkvDtype const dtype
        = inputDesc[kInputK].type == DataType::kHALF ? HpcmBiwkvDtype::kFloat16 : HpcmBiwkvDtype::kFloat32;
    // TensorRT allocated getWorkspaceSize() for the profile's largest shape, which covers this one.
    size_t const workspaceBytes = hpcm_biwkv_workspace_bytes(B, C, T);
    cudaError_t const status = hpcm_biwkv_forward(static_cast<float const*>(inputs[kInputW]),
        static_cast<float const*>(inputs[kInputU]), inputs[kInputK], inputs[kInputV], outputs[0], B, C, T, dtype,
        workspace, workspaceBytes, stream);
    if (status != cudaSuccess)
    {
        logError(std::string("kernel launch failed: ") + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* BiwkvPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

nvinfer1::PluginFieldCollection const* BiwkvPlugin::getFieldsToSerialize() noexcept
{
    return &mSerialized;
}

// The ONNX parser passes only the fields getFieldNames lists (none), and the engine stores none,
// so both phases build the same stateless plugin.
nvinfer1::IPluginV3* BiwkvPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* /*fc*/, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        return new BiwkvPlugin();
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

nvinfer1::PluginFieldCollection const* BiwkvPluginCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

char const* BiwkvPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* BiwkvPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* BiwkvPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

namespace
{

// The one creator both registration routes hand out.
BiwkvPluginCreator& creatorInstance()
{
    static BiwkvPluginCreator creator;
    return creator;
}

#if defined(HPCM_BIWKV_STATIC_REGISTRATION)
// Registers at load time under the contract's namespace. REGISTER_TENSORRT_PLUGIN would pass an
// empty namespace, which for a V3 creator leaves it unclear which of the two names the registry
// files it under; the ONNX parser looks it up by the contract's.
struct StaticRegistration
{
    StaticRegistration()
    {
        if (!getPluginRegistry()->registerCreator(creatorInstance(), kPluginNamespace))
        {
            logError("static registration failed: a creator of the same name, version and namespace exists");
        }
    }
};
StaticRegistration const gStaticRegistration;
#endif

} // namespace

} // namespace plugin
} // namespace hpcm

// Entry points of IPluginRegistry::loadLibrary (trtexec --dynamicPlugins,
// trt.get_plugin_registry().load_library); the only symbols the library exports.
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    hpcm::plugin::gLoggerFinder.store(finder);
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&hpcm::plugin::creatorInstance()};
    nbCreators = 1;
    return creators;
}
