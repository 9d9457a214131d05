#include "biwkv_plugin.h"

#include <atomic>
#include <cstring>
#include <exception>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

namespace hpcm
{
namespace plugin
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::TensorFormat;

constexpr char const* kPluginName = HPCM_BIWKV_OP_TYPE;
constexpr char const* kPluginVersion = HPCM_BIWKV_PLUGIN_VERSION;
constexpr char const* kPluginNamespace = HPCM_BIWKV_PLUGIN_NAMESPACE;
constexpr char const* kEarlierVersions[] = {HPCM_BIWKV_EARLIER_PLUGIN_VERSIONS};
constexpr char const* kModeNames[] = {HPCM_BIWKV_MODE_NAMES};
static_assert(std::size(kModeNames) == HPCM_BIWKV_MODE_COUNT, "contract.json lists the modes biwkv_mode.h numbers");
constexpr char const* kModeField = "mode";

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

// The mode of that name (a field's characters, not necessarily NUL-terminated); false if none is.
bool modeNamed(char const* name, size_t length, HpcmBiwkvMode& mode)
{
    std::string const text(name, strnlen(name, length));
    for (int32_t i = 0; i < HPCM_BIWKV_MODE_COUNT; ++i)
    {
        if (text == kModeNames[i])
        {
            mode = static_cast<HpcmBiwkvMode>(i);
            return true;
        }
    }
    return false;
}

HpcmBiwkvMode defaultMode()
{
    HpcmBiwkvMode mode = HpcmBiwkvMode::kExact;
    modeNamed(HPCM_BIWKV_DEFAULT_MODE, std::strlen(HPCM_BIWKV_DEFAULT_MODE), mode);
    return mode;
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

BiwkvPlugin::BiwkvPlugin(HpcmBiwkvMode mode, char const* version, bool serialisesMode)
    : mMode(mode)
    , mVersion(version)
    , mSerialisesMode(serialisesMode)
    , mModeField{kModeField, kModeNames[static_cast<int32_t>(mode)], nvinfer1::PluginFieldType::kCHAR,
          static_cast<int32_t>(std::strlen(kModeNames[static_cast<int32_t>(mode)]))}
    , mSerialized{serialisesMode ? 1 : 0, serialisesMode ? &mModeField : nullptr}
{
}

// mSerialized points into the object itself, so a copy builds its own.
BiwkvPlugin::BiwkvPlugin(BiwkvPlugin const& other)
    : BiwkvPlugin(other.mMode, other.mVersion, other.mSerialisesMode)
{
}

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
    return mVersion;
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
    return hpcm_biwkv_workspace_bytes(most.d[0], most.d[1], most.d[2], mMode);
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
    size_t const workspaceBytes = hpcm_biwkv_workspace_bytes(B, C, T, mMode);
    cudaError_t const status = hpcm_biwkv_forward(static_cast<float const*>(inputs[kInputW]),
        static_cast<float const*>(inputs[kInputU]), inputs[kInputK], inputs[kInputV], outputs[0], B, C, T, dtype,
        mMode, workspace, workspaceBytes, stream);
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

BiwkvPluginCreator::BiwkvPluginCreator(char const* version, bool readsMode)
    : mVersion(version)
    , mReadsMode(readsMode)
    , mModeField{kModeField, nullptr, nvinfer1::PluginFieldType::kCHAR, 0}
    , mFieldNames{readsMode ? 1 : 0, readsMode ? &mModeField : nullptr}
{
}

// The ONNX parser passes the fields getFieldNames lists (the node's "mode" attribute, as characters),
// and deserialisation the ones getFieldsToSerialize gave: both phases build the same plugin. A node
// without the field computes the contract's default mode; an unknown mode is refused.
nvinfer1::IPluginV3* BiwkvPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        HpcmBiwkvMode mode = defaultMode();
        for (int32_t i = 0; mReadsMode && fc != nullptr && i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& field = fc->fields[i];
            if (field.name == nullptr || std::strcmp(field.name, kModeField) != 0)
            {
                continue;
            }
            if (field.type != nvinfer1::PluginFieldType::kCHAR || field.data == nullptr || field.length < 0
                || !modeNamed(static_cast<char const*>(field.data), static_cast<size_t>(field.length), mode))
            {
                std::string const given = field.type == nvinfer1::PluginFieldType::kCHAR && field.data != nullptr
                    ? std::string(static_cast<char const*>(field.data),
                        strnlen(static_cast<char const*>(field.data), static_cast<size_t>(field.length)))
                    : std::string("(not characters)");
                logError("unknown mode " + given + " (the plugin computes " + HPCM_BIWKV_DEFAULT_MODE
                    + " and the other modes of contract.json)");
                return nullptr;
            }
        }
        return new BiwkvPlugin(mode, mVersion, mReadsMode);
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
    return mVersion;
}

char const* BiwkvPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

namespace
{

// The creators both registration routes hand out: the current version's, then the earlier ones'.
class Creators
{
public:
    Creators()
    {
        mOwned.push_back(std::make_unique<BiwkvPluginCreator>(kPluginVersion, true));
        for (char const* version : kEarlierVersions)
        {
            mOwned.push_back(std::make_unique<BiwkvPluginCreator>(version, false));
        }
        for (std::unique_ptr<BiwkvPluginCreator> const& creator : mOwned)
        {
            mInterfaces.push_back(creator.get());
        }
    }

    std::vector<nvinfer1::IPluginCreatorInterface*> const& interfaces() const
    {
        return mInterfaces;
    }

private:
    std::vector<std::unique_ptr<BiwkvPluginCreator>> mOwned;
    std::vector<nvinfer1::IPluginCreatorInterface*> mInterfaces;
};

Creators const& creators()
{
    static Creators const instance;
    return instance;
}

#if defined(HPCM_BIWKV_STATIC_REGISTRATION)
// Registers at load time under the contract's namespace. REGISTER_TENSORRT_PLUGIN would pass an
// empty namespace, which for a V3 creator leaves it unclear which of the two names the registry
// files it under; the ONNX parser looks it up by the contract's.
struct StaticRegistration
{
    StaticRegistration()
    {
        for (nvinfer1::IPluginCreatorInterface* creator : creators().interfaces())
        {
            if (!getPluginRegistry()->registerCreator(*creator, kPluginNamespace))
            {
                logError("static registration failed: a creator of the same name, version and namespace exists");
            }
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
    std::vector<nvinfer1::IPluginCreatorInterface*> const& creators = hpcm::plugin::creators().interfaces();
    nbCreators = static_cast<int32_t>(creators.size());
    return creators.data();
}
