// Drives the TensorRT plugin the way TensorRT does, without TensorRT: getCreators, createPlugin (with
// the mode field as the ONNX parser passes it, and from the fields an engine serialised), the
// build-phase queries, then enqueue on the SIMT-emulated kernel, checked against direct float64 sums
// of both modes (the exact formula of shared/design/biwkv.md, the vrwkv weights of reference.py).
// Built only against TensorRT's headers (no libnvinfer).
//
//   biwkv_plugin_harness <name> <version> <namespace> <earlier version>...
// Prints one line per check and "ALL PASSED" or "SOME CHECKS FAILED" (exit status 1).

#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "biwkv_kernel.h"

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{

using nvinfer1::DataType;
using nvinfer1::TensorFormat;

class RecordingLogger final : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* message) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            errors.emplace_back(message);
        }
    }
    std::vector<std::string> errors;
};

class FixedLoggerFinder final : public nvinfer1::ILoggerFinder
{
public:
    explicit FixedLoggerFinder(nvinfer1::ILogger* logger)
        : mLogger(logger)
    {
    }
    nvinfer1::ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    nvinfer1::ILogger* mLogger;
};

bool gAllPassed = true;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    gAllPassed = gAllPassed && ok;
}

nvinfer1::Dims dims(std::vector<int64_t> const& extents)
{
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(extents.size());
    for (size_t i = 0; i < extents.size(); ++i)
    {
        d.d[i] = extents[i];
    }
    return d;
}

nvinfer1::PluginTensorDesc desc(std::vector<int64_t> const& extents, DataType type,
    TensorFormat format = TensorFormat::kLINEAR)
{
    return nvinfer1::PluginTensorDesc{dims(extents), type, format, -1.0F};
}

// w, u, k, v and y for one (B, C, T) with TensorRT's build-time view: min = opt = max = the shape.
std::vector<nvinfer1::DynamicPluginTensorDesc> buildDescs(int64_t B, int64_t C, int64_t T, DataType io)
{
    std::vector<nvinfer1::DynamicPluginTensorDesc> out;
    for (auto const& [extents, type] : std::vector<std::pair<std::vector<int64_t>, DataType>>{
             {{C}, DataType::kFLOAT}, {{C}, DataType::kFLOAT}, {{B, C, T}, io}, {{B, C, T}, io}, {{B, C, T}, io}})
    {
        nvinfer1::DynamicPluginTensorDesc d{};
        d.desc = desc(extents, type);
        d.min = d.opt = d.max = dims(extents);
        out.push_back(d);
    }
    return out;
}

// The weight a_tn of exp(k_n) in y_t = sum_n a_tn exp(k_n) v_n / sum_n a_tn exp(k_n), as written out:
// exact, the biwkv.md formula; vrwkv, reference.py's weights for t in the chunk [s, s + L) of
// L = ceil(T / 32) tokens: exp(-|t-n| w) for n < s or n > t, exp(-(t-n-1) w) + [n > s] (exp(-w) - 1)
// exp((t+1-n) w) for s <= n < t, and exp(u) + [t > s] (1 - exp(w)) on the diagonal.
double weight(HpcmBiwkvMode mode, int64_t t, int64_t n, int64_t T, double w, double u)
{
    double const distance = static_cast<double>(std::llabs(t - n));
    if (mode == HpcmBiwkvMode::kExact)
    {
        return n == t ? std::exp(u) : std::exp(-(distance - 1.0) * w);
    }
    int64_t const length = (T + 31) / 32;
    int64_t const s = t / length * length;
    if (n == t)
    {
        return std::exp(u) + (t > s ? 1.0 - std::exp(w) : 0.0);
    }
    if (n >= s && n < t)
    {
        return std::exp(-(distance - 1.0) * w) + (n > s ? (std::exp(-w) - 1.0) * std::exp((distance + 1.0) * w) : 0.0);
    }
    return std::exp(-distance * w);
}

// Every pair (t, n) summed directly, in double (the harness's w keep every weight within exp(+-3)).
std::vector<double> directSum(HpcmBiwkvMode mode, std::vector<float> const& w, std::vector<float> const& u,
    std::vector<double> const& k, std::vector<double> const& v, int64_t B, int64_t C, int64_t T)
{
    std::vector<double> y(k.size());
    for (int64_t row = 0; row < B * C; ++row)
    {
        double const wc = w[static_cast<size_t>(row % C)];
        double const uc = u[static_cast<size_t>(row % C)];
        double const* kr = k.data() + row * T;
        double const* vr = v.data() + row * T;
        double const top = *std::max_element(kr, kr + T);
        for (int64_t t = 0; t < T; ++t)
        {
            double num = 0.0;
            double den = 0.0;
            for (int64_t n = 0; n < T; ++n)
            {
                double const e = weight(mode, t, n, T, wc, uc) * std::exp(kr[n] - top);
                num += e * vr[n];
                den += e;
            }
            y[static_cast<size_t>(row * T + t)] = num / den;
        }
    }
    return y;
}

// Enqueues the plugin (`mode`: what it was created to compute) on (B, C, T) inputs and compares y with
// the direct sum of that mode.
void checkEnqueue(nvinfer1::IPluginV3OneRuntime& runtime, nvinfer1::IPluginV3OneBuild& build, HpcmBiwkvMode mode,
    int64_t B, int64_t C, int64_t T, DataType io, std::mt19937& rng)
{
    bool const vrwkv = mode == HpcmBiwkvMode::kVrwkv;
    bool const half = io == DataType::kHALF;
    size_t const n = static_cast<size_t>(B * C * T);
    std::uniform_real_distribution<double> uniform(-1.0, 1.0);
    std::vector<float> w(static_cast<size_t>(C));
    std::vector<float> u(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c)
    {
        w[static_cast<size_t>(c)] = static_cast<float>(3.0 * uniform(rng) / static_cast<double>(T));
        u[static_cast<size_t>(c)] = static_cast<float>(2.0 * uniform(rng) / static_cast<double>(T));
    }
    std::vector<double> k(n);
    std::vector<double> v(n);
    std::vector<float> k32(n);
    std::vector<float> v32(n);
    std::vector<__half> k16(n);
    std::vector<__half> v16(n);
    for (size_t i = 0; i < n; ++i)
    {
        k32[i] = static_cast<float>(4.0 * uniform(rng));
        v32[i] = static_cast<float>(uniform(rng));
        k16[i] = __float2half_rn(k32[i]);
        v16[i] = __float2half_rn(v32[i]);
        k[i] = half ? __half2float(k16[i]) : k32[i];
        v[i] = half ? __half2float(v16[i]) : v32[i];
    }
    std::vector<double> const expected = directSum(mode, w, u, k, v, B, C, T);

    std::vector<nvinfer1::DynamicPluginTensorDesc> const descs = buildDescs(B, C, T, io);
    size_t const workspaceBytes = build.getWorkspaceSize(descs.data(), 4, descs.data() + 4, 1);
    std::vector<unsigned char> workspace(workspaceBytes);
    std::vector<float> y32(n);
    std::vector<__half> y16(n);
    nvinfer1::PluginTensorDesc inDesc[4] = {descs[0].desc, descs[1].desc, descs[2].desc, descs[3].desc};
    nvinfer1::PluginTensorDesc outDesc[1] = {descs[4].desc};
    void const* inputs[4] = {w.data(), u.data(), half ? static_cast<void const*>(k16.data()) : k32.data(),
        half ? static_cast<void const*>(v16.data()) : v32.data()};
    void* outputs[1] = {half ? static_cast<void*>(y16.data()) : y32.data()};
    bool const shapeOk = runtime.onShapeChange(inDesc, 4, outDesc, 1) == 0;
    int32_t const status = runtime.enqueue(
        inDesc, outDesc, inputs, outputs, workspaceBytes > 0 ? workspace.data() : nullptr, nullptr);

    double worst = 0.0;
    for (size_t i = 0; i < n; ++i)
    {
        double const got = half ? __half2float(y16[i]) : y32[i];
        double const err = std::fabs(got - expected[i]) / (std::fabs(expected[i]) + 1.0);
        worst = std::isnan(err) ? err : std::max(worst, err);
    }
    double const tolerance = half ? 1e-3 : 1e-5;
    char line[200];
    std::snprintf(line, sizeof line, "enqueue %s B=%lld C=%lld T=%lld %s workspace %zu B: max err %.3g (tol %.0e)",
        vrwkv ? "vrwkv" : "exact", static_cast<long long>(B), static_cast<long long>(C), static_cast<long long>(T),
        half ? "fp16" : "fp32", workspaceBytes, worst, tolerance);
    check(shapeOk && status == 0 && workspaceBytes == hpcm_biwkv_workspace_bytes(B, C, T, mode)
            && worst <= tolerance,
        line);
}

struct Capabilities
{
    nvinfer1::IPluginV3OneCore* core;
    nvinfer1::IPluginV3OneBuild* build;
    nvinfer1::IPluginV3OneRuntime* runtime;
};

Capabilities capabilities(nvinfer1::IPluginV3& plugin)
{
    using nvinfer1::PluginCapabilityType;
    return Capabilities{
        static_cast<nvinfer1::IPluginV3OneCore*>(plugin.getCapabilityInterface(PluginCapabilityType::kCORE)),
        static_cast<nvinfer1::IPluginV3OneBuild*>(plugin.getCapabilityInterface(PluginCapabilityType::kBUILD)),
        static_cast<nvinfer1::IPluginV3OneRuntime*>(plugin.getCapabilityInterface(PluginCapabilityType::kRUNTIME))};
}

// The fields a plugin gives an engine to store, as "name=value" (characters) joined by spaces.
std::string serialised(nvinfer1::IPluginV3& plugin)
{
    nvinfer1::PluginFieldCollection const* fields = capabilities(plugin).runtime->getFieldsToSerialize();
    std::string text;
    for (int32_t i = 0; fields != nullptr && i < fields->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = fields->fields[i];
        text += (text.empty() ? "" : " ") + std::string(field.name) + "="
            + (field.type == nvinfer1::PluginFieldType::kCHAR
                    ? std::string(static_cast<char const*>(field.data), static_cast<size_t>(field.length))
                    : std::string("(not characters)"));
    }
    return text;
}

// The "mode" field as the ONNX parser passes a string attribute (`terminated`: with a trailing NUL,
// as some producers count it).
nvinfer1::PluginField modeField(char const* mode, bool terminated = false)
{
    return nvinfer1::PluginField{"mode", mode, nvinfer1::PluginFieldType::kCHAR,
        static_cast<int32_t>(std::strlen(mode) + (terminated ? 1 : 0))};
}

std::unique_ptr<nvinfer1::IPluginV3> attachedCopy(nvinfer1::IPluginV3& plugin)
{
    return std::unique_ptr<nvinfer1::IPluginV3>(capabilities(plugin).runtime->attachToContext(nullptr));
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 4)
    {
        std::fprintf(stderr, "usage: %s NAME VERSION NAMESPACE [EARLIER_VERSION...]\n", argv[0]);
        return 2;
    }
    std::vector<std::string> const versions(argv + 2, argv + 3);
    std::vector<std::string> const earlierVersions(argv + 4, argv + argc);
    RecordingLogger logger;
    FixedLoggerFinder finder(&logger);
    setLoggerFinder(&finder);

    int32_t nbCreators = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(creators != nullptr && nbCreators == static_cast<int32_t>(1 + earlierVersions.size()),
        "getCreators returns one creator per contract version");
    if (creators == nullptr || nbCreators < 1)
    {
        return 1;
    }
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        nvinfer1::InterfaceInfo const info = creators[i]->getInterfaceInfo();
        check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0, std::string("creator interface ") + info.kind);
        auto& creator = *static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        std::string const expected = i == 0 ? versions[0] : earlierVersions[static_cast<size_t>(i - 1)];
        nvinfer1::PluginFieldCollection const* fields = creator.getFieldNames();
        bool const listsMode = fields != nullptr && fields->nbFields == 1
            && std::strcmp(fields->fields[0].name, "mode") == 0
            && fields->fields[0].type == nvinfer1::PluginFieldType::kCHAR;
        bool const listsNothing = fields != nullptr && fields->nbFields == 0;
        check(std::strcmp(creator.getPluginName(), argv[1]) == 0 && creator.getPluginVersion() == expected
                && std::strcmp(creator.getPluginNamespace(), argv[3]) == 0 && (i == 0 ? listsMode : listsNothing),
            std::string("creator ") + creator.getPluginNamespace() + "::" + creator.getPluginName() + " v"
                + creator.getPluginVersion() + (i == 0 ? " lists the field mode" : " lists no fields"));
    }
    auto& creator = *static_cast<nvinfer1::IPluginCreatorV3One*>(creators[0]);

    // Build phase: the ONNX parser passes the node's mode attribute.
    nvinfer1::PluginField const vrwkvField = modeField("vrwkv");
    nvinfer1::PluginFieldCollection const vrwkvFields{1, &vrwkvField};
    std::unique_ptr<nvinfer1::IPluginV3> plugin(
        creator.createPlugin("wkv", &vrwkvFields, nvinfer1::TensorRTPhase::kBUILD));
    check(plugin != nullptr, "createPlugin (build phase, mode vrwkv)");
    if (!plugin)
    {
        return 1;
    }
    auto [core, build, runtime] = capabilities(*plugin);
    check(core != nullptr && build != nullptr && runtime != nullptr, "core, build and runtime capabilities");
    check(std::strcmp(core->getPluginName(), argv[1]) == 0 && core->getPluginVersion() == versions[0]
            && std::strcmp(core->getPluginNamespace(), argv[3]) == 0,
        "plugin identity matches the creator");
    check(serialised(*plugin) == "mode=vrwkv", "serialises its mode: " + serialised(*plugin));

    check(build->getNbOutputs() == 1, "one output");
    DataType const inTypes[4] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kHALF, DataType::kHALF};
    DataType outType = DataType::kFLOAT;
    check(build->getOutputDataTypes(&outType, 1, inTypes, 4) == 0 && outType == DataType::kHALF,
        "output dtype follows k");

    // The plugin only forwards k's expressions, so distinct addresses stand in for TensorRT's.
    nvinfer1::IDimensionExpr const* const exprB = reinterpret_cast<nvinfer1::IDimensionExpr const*>(0x10);
    nvinfer1::IDimensionExpr const* const exprC = reinterpret_cast<nvinfer1::IDimensionExpr const*>(0x20);
    nvinfer1::IDimensionExpr const* const exprT = reinterpret_cast<nvinfer1::IDimensionExpr const*>(0x30);
    nvinfer1::DimsExprs inExprs[4]{};
    inExprs[0].nbDims = inExprs[1].nbDims = 1;
    inExprs[0].d[0] = inExprs[1].d[0] = exprC;
    for (int i : {2, 3})
    {
        inExprs[i].nbDims = 3;
        inExprs[i].d[0] = exprB;
        inExprs[i].d[1] = exprC;
        inExprs[i].d[2] = exprT;
    }
    nvinfer1::DimsExprs outExprs[1]{};
    // Output = k's expressions needs no arithmetic; the builder is never called, and only libnvinfer can
    // make a real one, so untouched storage stands in for it.
    alignas(nvinfer1::IExprBuilder) unsigned char builderStorage[sizeof(nvinfer1::IExprBuilder)]{};
    auto& exprBuilder = *reinterpret_cast<nvinfer1::IExprBuilder*>(builderStorage);
    check(build->getOutputShapes(inExprs, 4, nullptr, 0, outExprs, 1, exprBuilder) == 0 && outExprs[0].nbDims == 3
            && outExprs[0].d[0] == exprB && outExprs[0].d[1] == exprC && outExprs[0].d[2] == exprT,
        "output shape is k's (B, C, T)");

    std::vector<nvinfer1::DynamicPluginTensorDesc> formats = buildDescs(1, 4, 64, DataType::kHALF);
    check(build->supportsFormatCombination(0, formats.data(), 4, 1)
            && build->supportsFormatCombination(2, formats.data(), 4, 1)
            && build->supportsFormatCombination(4, formats.data(), 4, 1),
        "accepts float32 w and float16 k, v, y");
    formats[0].desc.type = DataType::kHALF;
    formats[3].desc.type = DataType::kFLOAT;
    formats[2].desc.format = TensorFormat::kCHW2;
    check(!build->supportsFormatCombination(0, formats.data(), 4, 1)
            && !build->supportsFormatCombination(3, formats.data(), 4, 1)
            && !build->supportsFormatCombination(2, formats.data(), 4, 1)
            && !build->supportsFormatCombination(5, formats.data(), 4, 1),
        "refuses float16 w, v unlike k, non-linear formats and positions past the output");

    std::vector<nvinfer1::DynamicPluginTensorDesc> good = buildDescs(2, 3, 5000, DataType::kFLOAT);
    check(build->configurePlugin(good.data(), 4, good.data() + 4, 1) == 0, "configurePlugin accepts (B, C, T)");
    size_t const vrwkvWorkspace = hpcm_biwkv_workspace_bytes(2, 3, 5000, HpcmBiwkvMode::kVrwkv);
    check(build->getWorkspaceSize(good.data(), 4, good.data() + 4, 1) == vrwkvWorkspace
            && vrwkvWorkspace > hpcm_biwkv_workspace_bytes(2, 3, 5000, HpcmBiwkvMode::kExact),
        "workspace is the kernel's for the mode and the profile's largest shape");
    std::vector<nvinfer1::DynamicPluginTensorDesc> bad = good;
    bad[0].desc.dims = bad[0].min = bad[0].opt = bad[0].max = dims({4});
    size_t errorsBefore = logger.errors.size();
    check(build->configurePlugin(bad.data(), 4, bad.data() + 4, 1) != 0 && logger.errors.size() == errorsBefore + 1
            && logger.errors.back().find(argv[1]) == 0,
        "configurePlugin refuses w with another C and logs why through the logger finder");

    // Runtime phase: deserialising an engine hands the creator the fields the plugin serialised.
    std::unique_ptr<nvinfer1::IPluginV3> deserialised(creator.createPlugin(
        "wkv", capabilities(*plugin).runtime->getFieldsToSerialize(), nvinfer1::TensorRTPhase::kRUNTIME));
    check(deserialised != nullptr && serialised(*deserialised) == "mode=vrwkv",
        "createPlugin (runtime phase) from the serialised fields");
    std::mt19937 rng(7);
    std::unique_ptr<nvinfer1::IPluginV3> attached = attachedCopy(*deserialised);
    check(attached != nullptr && attached.get() != deserialised.get(), "attachToContext returns a new plugin");
    for (DataType io : {DataType::kFLOAT, DataType::kHALF})
    {
        checkEnqueue(*capabilities(*attached).runtime, *build, HpcmBiwkvMode::kVrwkv, 2, 3, 300, io, rng);
        checkEnqueue(*capabilities(*attached).runtime, *build, HpcmBiwkvMode::kVrwkv, 1, 2, 2100, io, rng);
    }

    // A node without the field (and one whose field counts its NUL) computes the default, exact.
    nvinfer1::PluginFieldCollection const noFields{0, nullptr};
    std::unique_ptr<nvinfer1::IPluginV3> exact(creator.createPlugin("wkv", &noFields, nvinfer1::TensorRTPhase::kBUILD));
    nvinfer1::PluginField const terminated = modeField("exact", true);
    nvinfer1::PluginFieldCollection const terminatedFields{1, &terminated};
    std::unique_ptr<nvinfer1::IPluginV3> exactTerminated(
        creator.createPlugin("wkv", &terminatedFields, nvinfer1::TensorRTPhase::kBUILD));
    check(exact != nullptr && serialised(*exact) == "mode=exact" && exactTerminated != nullptr
            && serialised(*exactTerminated) == "mode=exact",
        "no field, or \"exact\" with its NUL: mode exact");
    if (exact)
    {
        std::unique_ptr<nvinfer1::IPluginV3> attachedExact = attachedCopy(*exact);
        for (DataType io : {DataType::kFLOAT, DataType::kHALF})
        {
            checkEnqueue(*capabilities(*attachedExact).runtime, *capabilities(*exact).build, HpcmBiwkvMode::kExact, 2,
                3, 300, io, rng);
            checkEnqueue(*capabilities(*attachedExact).runtime, *capabilities(*exact).build, HpcmBiwkvMode::kExact, 1,
                2, 2100, io, rng);
        }
    }
    nvinfer1::PluginField const unknownField = modeField("chunky");
    nvinfer1::PluginFieldCollection const unknownFields{1, &unknownField};
    errorsBefore = logger.errors.size();
    std::unique_ptr<nvinfer1::IPluginV3> unknown(
        creator.createPlugin("wkv", &unknownFields, nvinfer1::TensorRTPhase::kBUILD));
    check(unknown == nullptr && logger.errors.size() == errorsBefore + 1
            && logger.errors.back().find("chunky") != std::string::npos,
        "createPlugin refuses an unknown mode and logs it");

    // Nodes and engines of earlier contract versions: no fields, the default mode.
    for (int32_t i = 1; i < nbCreators; ++i)
    {
        auto& earlier = *static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        std::unique_ptr<nvinfer1::IPluginV3> old(
            earlier.createPlugin("wkv", &noFields, nvinfer1::TensorRTPhase::kRUNTIME));
        check(old != nullptr
                && capabilities(*old).core->getPluginVersion() == earlierVersions[static_cast<size_t>(i - 1)]
                && serialised(*old).empty(),
            std::string("version ") + earlier.getPluginVersion() + " plugin: its own version, nothing serialised");
        if (old)
        {
            std::unique_ptr<nvinfer1::IPluginV3> attachedOld = attachedCopy(*old);
            checkEnqueue(*capabilities(*attachedOld).runtime, *capabilities(*old).build, HpcmBiwkvMode::kExact, 2, 3,
                300, DataType::kFLOAT, rng);
        }
    }

    nvinfer1::PluginTensorDesc const rank2[4] = {desc({3}, DataType::kFLOAT), desc({3}, DataType::kFLOAT),
        desc({3, 8}, DataType::kFLOAT), desc({3, 8}, DataType::kFLOAT)};
    float dummy = 0.0F;
    void const* dummyInputs[4] = {&dummy, &dummy, &dummy, &dummy};
    void* dummyOutputs[1] = {&dummy};
    check(capabilities(*attached).runtime->enqueue(rank2, rank2 + 2, dummyInputs, dummyOutputs, nullptr, nullptr) != 0,
        "enqueue refuses rank-2 tensors");

    setLoggerFinder(nullptr);
    std::printf("%s\n", gAllPassed ? "ALL PASSED" : "SOME CHECKS FAILED");
    return gAllPassed ? 0 : 1;
}
