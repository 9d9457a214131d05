// TensorRT IPluginV3 wrapper around hpcm_biwkv_forward (see README.md in this folder).
//
// Name, version and namespace are compile definitions generated from contract.json by
// plugins/CMakeLists.txt, so they always equal what the ONNX exporter writes.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>

#if !defined(HPCM_BIWKV_PLUGIN_NAME) || !defined(HPCM_BIWKV_PLUGIN_VERSION) || !defined(HPCM_BIWKV_PLUGIN_NAMESPACE)
#error "Build through plugins/CMakeLists.txt: it defines the plugin name, version and namespace from contract.json"
#endif

namespace hpcm
{
namespace plugin
{

// Inputs w, u (C,) float32 and k, v (B, C, T) float32 or float16; output y like k. The plugin has
// no attributes: everything it needs is in the input shapes and types.
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

    BiwkvPlugin() = default;
    ~BiwkvPlugin() override = default;
    BiwkvPlugin(BiwkvPlugin const&) = default;
    BiwkvPlugin& operator=(BiwkvPlugin const&) = delete;

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
    // Declarative serialisation of nothing: the plugin is stateless, so an engine only records its
    // name, version and namespace.
    nvinfer1::PluginFieldCollection mSerialized{0, nullptr};
};

class BiwkvPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    BiwkvPluginCreator() = default;
    ~BiwkvPluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    nvinfer1::PluginFieldCollection mFieldNames{0, nullptr};
};

} // namespace plugin
} // namespace hpcm
