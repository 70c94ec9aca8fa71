// Safetensors reader/writer: bit-exact round trips and header validation.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/rng.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace moefy;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
    Rng r(seed);
    std::vector<uint8_t> b(n);
    for (auto& x : b) x = uint8_t(r.next());
    return b;
}

struct Sample {
    std::vector<TensorSpec> specs;
    std::vector<std::vector<uint8_t>> data;
};

Sample make_sample() {
    Sample s;
    s.specs = {{"a.f32", DType::F32, {3, 5}}, {"b.f16", DType::F16, {7}}, {"c.bf16", DType::BF16, {2, 3, 4}}, {"d.empty", DType::F32, {0, 4}}};
    for (size_t i = 0; i < s.specs.size(); ++i) s.data.push_back(random_bytes(s.specs[i].nbytes(), i + 1));
    return s;
}

TensorProducer producer(const Sample& s) {
    return [&s](size_t i, ByteSink& sink) { sink.write(s.data[i].data(), s.data[i].size()); };
}

// Writes a raw safetensors file with the given header text and data size.
void write_raw(const std::string& path, const std::string& header, size_t data_bytes, int64_t hlen_override = -1) {
    std::ofstream f(path, std::ios::binary);
    uint64_t hlen = hlen_override >= 0 ? uint64_t(hlen_override) : header.size();
    f.write(reinterpret_cast<const char*>(&hlen), 8);
    f << header;
    std::string zeros(data_bytes, '\0');
    f << zeros;
}

}  // namespace

TEST(Safetensors, RoundTripSingleFileBitExact) {
    TempDir dir;
    Sample s = make_sample();
    write_safetensors(dir.path + "/x.safetensors", s.specs, producer(s));
    auto st = TensorStore::open_file(dir.path + "/x.safetensors");
    ASSERT_EQ(st->tensor_count(), s.specs.size());
    for (size_t i = 0; i < s.specs.size(); ++i) {
        const TensorView& t = st->get(s.specs[i].name);
        EXPECT_EQ(t.dtype, s.specs[i].dtype);
        EXPECT_EQ(t.shape, s.specs[i].shape);
        ASSERT_EQ(t.nbytes, s.data[i].size());
        if (t.nbytes > 0) {  // empty: no pointers to compare
            EXPECT_EQ(0, std::memcmp(t.data, s.data[i].data(), t.nbytes)) << s.specs[i].name;
        }
    }
    // The data section starts on a 64-byte boundary (header padded).
    uint64_t hlen;
    std::ifstream f(dir.path + "/x.safetensors", std::ios::binary);
    f.read(reinterpret_cast<char*>(&hlen), 8);
    EXPECT_EQ((hlen + 8) % 64, 0u);
}

TEST(Safetensors, RoundTripShardedBitExact) {
    TempDir dir;
    Sample s = make_sample();
    auto files = write_checkpoint_tensors(dir.path, s.specs, producer(s), 64);  // forces several shards
    ASSERT_GT(files.size(), 2u);
    EXPECT_TRUE(fs::exists(dir.path + "/model.safetensors.index.json"));
    EXPECT_FALSE(fs::exists(dir.path + "/model.safetensors"));
    auto st = TensorStore::open_dir(dir.path);
    EXPECT_GT(st->files().size(), 1u);
    for (size_t i = 0; i < s.specs.size(); ++i) {
        const TensorView& t = st->get(s.specs[i].name);
        if (t.nbytes > 0) {  // empty: no pointers to compare
            EXPECT_EQ(0, std::memcmp(t.data, s.data[i].data(), t.nbytes)) << s.specs[i].name;
        }
    }
    auto idx = nlohmann::json::parse(read_file(dir.path + "/model.safetensors.index.json"));
    size_t total = 0;
    for (auto& sp : s.specs) total += sp.nbytes();
    EXPECT_EQ(idx["metadata"]["total_size"].get<size_t>(), total);
}

TEST(Safetensors, SingleFileWhenUnderShardLimit) {
    TempDir dir;
    Sample s = make_sample();
    auto files = write_checkpoint_tensors(dir.path, s.specs, producer(s), size_t(1) << 30);
    ASSERT_EQ(files, std::vector<std::string>{"model.safetensors"});
    EXPECT_EQ(TensorStore::open_dir(dir.path)->tensor_count(), s.specs.size());
}

TEST(Safetensors, ReadRowsConvertsEveryDtype) {
    TempDir dir;
    std::vector<float> vals = {1.0f, -2.5f, 0.15625f, 3e-3f, 65504.0f, -0.0f};
    std::vector<TensorSpec> specs = {{"f32", DType::F32, {2, 3}}, {"f16", DType::F16, {2, 3}}, {"bf16", DType::BF16, {2, 3}}};
    write_safetensors(dir.path + "/m.safetensors", specs, [&](size_t i, ByteSink& sink) {
        std::vector<uint8_t> buf(specs[i].nbytes());
        from_f32(specs[i].dtype, vals.data(), buf.data(), vals.size());
        sink.write(buf.data(), buf.size());
    });
    auto st = TensorStore::open_file(dir.path + "/m.safetensors");
    for (auto& sp : specs) {
        std::vector<float> row(3);
        st->read_rows_f32(st->get(sp.name), 1, 1, row.data());
        const float tol = sp.dtype == DType::F32 ? 0.0f : sp.dtype == DType::F16 ? 1e-3f : 1e-2f;
        for (int j = 0; j < 3; ++j) EXPECT_NEAR(row[size_t(j)], vals[size_t(3 + j)], std::abs(vals[size_t(3 + j)]) * tol) << sp.name;
    }
}

TEST(Safetensors, WriterRefusesWrongByteCount) {
    TempDir dir;
    std::vector<TensorSpec> specs = {{"a", DType::F32, {4}}};
    EXPECT_THROW(write_safetensors(dir.path + "/m.safetensors", specs, [](size_t, ByteSink& s) { float x = 0; s.write(&x, 4); }),
                 Error);
}

// Every header defect gives an Error naming the file (and tensor where there is one).
struct Defect {
    const char* name;
    std::string header;
    size_t data_bytes;
    int64_t hlen_override;
    const char* expect;  // substring of the message
};

TEST(Safetensors, HeaderDefectsAreRefusedClearly) {
    TempDir dir;
    const std::vector<Defect> defects = {
        {"header_past_end", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, 1 << 20, "header length"},
        {"bad_json", R"({"a":{"dtype":"F32",)", 4, -1, "well-formed JSON"},
        {"unknown_dtype", R"({"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}})", 4, -1, "unsupported dtype 'I8'"},
        {"f64_dtype", R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8, -1, "unsupported dtype 'F64'"},
        {"offsets_past_data", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8, -1, "run past the data section"},
        {"overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, -1, "overlap"},
        {"size_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, -1, "needs 12"},
        {"reversed", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8, -1, "reversed"},
        {"missing_shape", R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4, -1, "missing shape"},
        {"not_object", R"([1,2,3])", 4, -1, "not a JSON object"},
    };
    for (const Defect& d : defects) {
        std::string path = dir.path + "/" + d.name + ".safetensors";
        write_raw(path, d.header, d.data_bytes, d.hlen_override);
        try {
            SafetensorsFile f(path);
            ADD_FAILURE() << d.name << ": no error";
        } catch (const Error& e) {
            std::string msg = e.what();
            EXPECT_NE(msg.find(path), std::string::npos) << d.name << ": " << msg;
            EXPECT_NE(msg.find(d.expect), std::string::npos) << d.name << ": " << msg;
        }
    }
    std::string tiny = dir.path + "/tiny.safetensors";
    std::ofstream(tiny) << "abc";
    EXPECT_THROW(SafetensorsFile f(tiny), Error);
}

TEST(Safetensors, TruncatedAndMissingShardsAreRefused) {
    TempDir dir;
    Sample s = make_sample();
    write_checkpoint_tensors(dir.path, s.specs, producer(s), 64);
    std::vector<std::string> shards;
    for (auto& e : fs::directory_iterator(dir.path))
        if (e.path().extension() == ".safetensors") shards.push_back(e.path().string());
    std::sort(shards.begin(), shards.end());
    // Truncate the first shard by a few bytes.
    fs::resize_file(shards[0], fs::file_size(shards[0]) - 3);
    try {
        TensorStore::open_dir(dir.path);
        ADD_FAILURE() << "truncated shard accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    }
    fs::remove(shards[0]);
    try {
        TensorStore::open_dir(dir.path);
        ADD_FAILURE() << "missing shard accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
    }
}

TEST(Dtype, ConversionsRoundTripAndRound) {
    for (float v : {0.0f, 1.0f, -1.5f, 3.140625f, 1e-8f, 6.1e-5f, 65504.0f, -2.0e-7f}) {
        EXPECT_EQ(f16_to_f32(f32_to_f16(v)), f16_to_f32(f32_to_f16(f16_to_f32(f32_to_f16(v)))));
        EXPECT_NEAR(f16_to_f32(f32_to_f16(v)), v, std::abs(v) * 1e-3 + 6e-8);
        EXPECT_NEAR(bf16_to_f32(f32_to_bf16(v)), v, std::abs(v) * 4e-3);
    }
    // Round to nearest even: 1 + 2^-8 is halfway between two bf16 values -> down to 1.
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 0.00390625f)), 1.0f);
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * 0.00390625f)), 1.0f + 4 * 0.00390625f);
    EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 0.00048828125f)), 1.0f);  // halfway in f16 -> even
    EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
    // Every f16 bit pattern survives f16 -> f32 -> f16 (NaNs stay NaN).
    for (uint32_t b = 0; b < 65536; ++b) {
        float f = f16_to_f32(uint16_t(b));
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
        } else {
            ASSERT_EQ(f32_to_f16(f), uint16_t(b)) << b;
        }
    }
}

// fuzz_safetensors finding: the format does not align tensors (an odd header
// length or odd data_offsets put 2-byte elements at odd addresses); reading
// them must not rely on alignment (UBSan reported the misaligned uint16 load).
TEST(Safetensors, TensorsAtOddAddressesReadCorrectly) {
    std::string header = R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[1,5]},)"
                         R"("h":{"dtype":"F16","shape":[9],"data_offsets":[5,23]}})";
    if (header.size() % 2) header += ' ';  // even: the data section starts at an even offset, the tensors one past it
    std::string file(8, '\0');
    const uint64_t hlen = header.size();
    std::memcpy(file.data(), &hlen, 8);
    file += header;
    file += '\x7f';                               // one byte the tensors do not use
    file += std::string("\x80\x3f\x00\xc0", 4);   // bf16 1.0, -2.0
    for (int i = 0; i < 9; ++i) file += std::string("\x00\x3c", 2);  // f16 1.0 x 9 (past the 8-wide vector step)
    ASSERT_EQ(uintptr_t(file.data() + 8 + hlen + 1) % 2, 1u) << "the test needs an odd address";
    const auto tensors = parse_safetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "odd.safetensors");
    ASSERT_EQ(tensors.size(), 2u);
    for (const auto& t : tensors) {
        std::vector<float> v(size_t(t.numel()));
        to_f32(t.dtype, t.data, v.data(), v.size());
        if (t.name == "b") EXPECT_EQ(v, (std::vector<float>{1.0f, -2.0f}));
        else EXPECT_EQ(v, std::vector<float>(9, 1.0f));
    }
}
