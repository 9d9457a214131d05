// TensorRT IPluginV3 wrapper around hpcm_biwkv_forward (see README.md in this folder).
//
// Name, versions, namespace and mode names are compile definitions generated from contract.json by
// plugins/CMakeLists.txt, so they always equal what the ONNX exporter writes.
#pragma once

#include "biwkv_kernel.h"

#include <NvInferRuntime.h>

#include <cstdint>

#if !defined(HPCM_BIWKV_OP_TYPE) || !defined(HPCM_BIWKV_PLUGIN_VERSION) || !defined(HPCM_BIWKV_PLUGIN_NAMESPACE)     \
    || !defined(HPCM_BIWKV_EARLIER_PLUGIN_VERSIONS) || !defined(HPCM_BIWKV_MODE_NAMES)                             \
    || !defined(HPCM_BIWKV_DEFAULT_MODE)
#error "Build through plugins/CMakeLists.txt: it defines the plugin's names, versions and modes from contract.json"
#endif

namespace hpcm
{
namespace plugin
{

// Inputs w, u (C,) float32 and k, v (B, C, T) float32 or float16; output y like k. Its one field is
// the mode (contract.json's "mode" attribute), serialised by name; everything else comes from the input
// shapes and types. A plugin of an earlier contract version (one without the mode) computes the default
// mode and serialises nothing, so engines and ONNX nodes of that version keep working.
class BiwkvPlugin final : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    static constexpr int32_t kInputW = 0;
    static constexpr int32_t kInputU = 1;
    static constexpr int32_t kInputK = 2;
    static constexpr int32_t kInputV = 3;
    static constexpr int32_t kNbInputs = 4;
    static constexpr int32_t kNbOutputs = 1;

    // `version` is the creator's (a string with static lifetime); `serialisesMode` is false for the
    // creators of earlier contract versions.
    BiwkvPlugin(HpcmBiwkvMode mode, char const* version, bool serialisesMode);
    ~BiwkvPlugin() override = default;
    BiwkvPlugin(BiwkvPlugin const& other);
    BiwkvPlugin& operator=(BiwkvPlugin const&) = delete;

    HpcmBiwkvMode mode() const noexcept
    {
        return mMode;
    }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    HpcmBiwkvMode mMode;
    char const* mVersion;
    bool mSerialisesMode;
    // Declarative serialisation: the mode's name, or nothing for an earlier version's plugin.
    nvinfer1::PluginField mModeField;
    nvinfer1::PluginFieldCollection mSerialized;
};

// One creator per contract version the library runs: the current one (field "mode") and each earlier one
// (no fields; its plugins compute the default mode).
class BiwkvPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    BiwkvPluginCreator(char const* version, bool readsMode);
    ~BiwkvPluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    char const* mVersion;
    bool mReadsMode;
    nvinfer1::PluginField mModeField;
    nvinfer1::PluginFieldCollection mFieldNames;
};

} // namespace plugin
} // namespace hpcm
