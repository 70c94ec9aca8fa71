// Healing (pipeline/heal.h): Adam on f32 masters of the trained tensors, with
// the engine running on those masters directly (the Model is loaded from a
// tensor store whose trained entries are views of them), so every step's
// update is what the next forward sees.
#include "pipeline/heal.h"

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

#include <fcntl.h>
#include <unistd.h>

#include "common/error.h"
#include "common/rng.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/backward.h"
#include "model/checkpoint.h"
#include "model/llama.h"

namespace moefy {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// One trained tensor: its f32 master (what the engine reads), gradient and Adam moments.
struct Trained {
    const TensorView* source = nullptr;  // in the input checkpoint
    std::vector<float> w, grad, m, v;
    double rms = 0;  // of the initial values: the unit of this tensor's steps
};

struct TrainedSet final : ParamGrads {
    std::vector<std::unique_ptr<Trained>> tensors;
    std::unordered_map<const void*, Trained*> by_data;  // master data -> tensor

    float* grad_of(const WeightRef& w) override {
        auto it = by_data.find(w.data);
        return it == by_data.end() ? nullptr : it->second->grad.data();
    }
    size_t params() const {
        size_t n = 0;
        for (const auto& t : tensors) n += t->w.size();
        return n;
    }
    void zero_grads() {
        for (auto& t : tensors) std::fill(t->grad.begin(), t->grad.end(), 0.0f);
    }
};

// The weights healing trains, as the engine loaded them from `model`.
std::vector<const WeightRef*> trained_weights(const Model& model, bool all_experts) {
    std::vector<const WeightRef*> out;
    auto add = [&](const WeightRef& w) {
        if (!w.empty()) out.push_back(&w);
    };
    for (int l = 0; l < model.config().num_layers; ++l) {
        const LayerWeights& L = model.layer(l);
        if (!L.is_moe) continue;
        add(L.moe.router), add(L.moe.router_w1), add(L.moe.router_w2);
        for (const auto* group : {&L.moe.experts, &L.moe.shared})
            for (const FfnWeights& f : *group) {
                add(f.down);
                if (all_experts) add(f.gate), add(f.up);
            }
    }
    return out;
}

void check_options(const HealOptions& o) {
    if (o.out_dir.empty()) fail("heal: no output directory (--out)");
    if (o.steps < 1) fail("--steps {}: must be at least 1", o.steps);
    if (o.accumulate < 1) fail("--accumulate {}: must be at least 1", o.accumulate);
    if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("--lr {}: must be a positive number", o.lr);
    if (!(o.warmup >= 0 && o.warmup < 1)) fail("--warmup {}: must be in [0, 1)", o.warmup);
    if (!(o.clip_norm >= 0) || !std::isfinite(o.clip_norm)) fail("--clip {}: must be 0 (none) or positive", o.clip_norm);
}

// Learning rate of step s (0-based) of n: linear warm-up over the first w steps, then cosine to lr / 10.
double learning_rate(const HealOptions& o, int s) {
    const int w = int(std::ceil(o.warmup * o.steps));
    if (s < w) return o.lr * double(s + 1) / double(w);
    const double p = o.steps - w > 1 ? double(s - w) / double(o.steps - w - 1) : 1.0;
    return o.lr * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * p)));
}

double mean_nll(Model& model, const std::vector<const TokenWindow*>& windows) {
    double nll = 0;
    size_t n = 0;
    for (const TokenWindow* w : windows) {
        nll += model.nll_sum(w->data(), int(w->size()));
        n += w->size() - 1;
    }
    return nll / double(n);
}

void write_healed(const Checkpoint& moe, const TrainedSet& set, const HealOptions& opt) {
    std::unordered_map<std::string, const Trained*> trained;
    for (const auto& t : set.tensors) trained[t->source->name] = t.get();
    OutputDir out(opt.out_dir, opt.force);
    // Everything but the tensors comes across as it is (config, tokenizer, plan, provenance).
    for (const fs::directory_entry& e : fs::directory_iterator(moe.dir)) {
        const std::string name = e.path().filename().string();
        if (!e.is_regular_file() || e.path().extension() == ".safetensors" || name == "model.safetensors.index.json") continue;
        fs::copy_file(e.path(), out.file(name));
    }
    const TensorStore& store = *moe.tensors;
    std::vector<TensorSpec> specs;
    for (const std::string& n : store.names()) {
        const TensorView& v = store.get(n);
        specs.push_back({n, v.dtype, v.shape});
    }
    write_checkpoint_tensors(out.path(), specs, [&](size_t i, ByteSink& sink) {
        const TensorView& v = store.get(specs[i].name);
        auto it = trained.find(v.name);
        if (it == trained.end()) {
            sink.write(v.data, v.nbytes);
            return;
        }
        std::vector<uint8_t> buf(v.nbytes);
        from_f32(v.dtype, it->second->w.data(), buf.data(), it->second->w.size());
        sink.write(buf.data(), buf.size());
    }, size_t(5'000'000'000));
    out.commit();
}

// A GGUF input: a copy of the file with the trained tensors' bytes replaced in
// place (each is a view into the file's mapping: an expert is a slice of its
// stacked tensor), so every other byte, the metadata and the tokenizer included,
// stays as it was.
void write_healed_gguf(const Checkpoint& moe, const TrainedSet& set, const HealOptions& opt) {
    check_output_path(opt.out_dir, OutputKind::File, opt.force);
    remove_stale_siblings(opt.out_dir);
    const std::string tmp = temp_sibling(opt.out_dir);
    try {
        fs::copy_file(moe.dir, tmp, fs::copy_options::overwrite_existing);
        const int fd = ::open(tmp.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0) fail("{}: cannot open for writing: {}", tmp, std::strerror(errno));
        for (const auto& t : set.tensors) {
            const TensorView& v = *t->source;
            std::vector<uint8_t> buf(v.nbytes);
            from_f32(v.dtype, t->w.data(), buf.data(), t->w.size());
            const off_t at = off_t(v.data - v.file->data());
            for (size_t done = 0; done < buf.size();) {
                const ssize_t n = ::pwrite(fd, buf.data() + done, buf.size() - done, at + off_t(done));
                if (n <= 0) {
                    const int e = errno;
                    ::close(fd);
                    fail("{}: cannot write tensor '{}': {}", tmp, v.name, std::strerror(e));
                }
                done += size_t(n);
            }
        }
        if (::close(fd) != 0) fail("{}: cannot write: {}", tmp, std::strerror(errno));
    } catch (...) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
    }
    commit_file(tmp, opt.out_dir);
}

}  // namespace

HealResult heal_checkpoint(const Checkpoint& moe, const std::vector<TokenWindow>& windows, const HealOptions& opt,
                           const HealProgress& progress) {
    check_options(opt);
    const auto t0 = Clock::now();
    if (!moe.config.is_moe()) fail("{}: is a dense model; heal trains the routers and experts of an MoE model", moe.dir);
    if (windows.size() < 2) fail("heal: {} window(s) of calibration text; it needs at least 2 (one is held out)", windows.size());

    // Held out: every 8th window, at least one.
    std::vector<const TokenWindow*> train, heldout;
    for (size_t i = 0; i < windows.size(); ++i) (i % 8 == 7 ? heldout : train).push_back(&windows[i]);
    if (heldout.empty()) heldout.push_back(train.back()), train.pop_back();

    // The trained tensors become f32 masters; the engine runs on a store whose entries for them are views of the masters.
    const TensorStore& store = *moe.tensors;
    TrainedSet set;
    {
        auto probe = Model::load(moe);
        std::unordered_map<const void*, const TensorView*> by_data;
        for (const std::string& n : store.names()) by_data[store.get(n).data] = &store.get(n);
        std::unordered_set<const TensorView*> seen;
        for (const WeightRef* w : trained_weights(*probe, opt.all_experts)) {
            auto it = by_data.find(w->data);
            if (it == by_data.end()) fail("{}: heal cannot train a weight that is not a whole checkpoint tensor", moe.dir);
            if (!seen.insert(it->second).second) continue;
            if (!fs::is_directory(moe.dir) && !it->second->file)
                fail("{}: tensor '{}' is stored as q8_0; heal writes its result into a copy of the file, which it can do "
                     "for f32, f16 and bf16 tensors only", moe.dir, it->second->name);
            auto t = std::make_unique<Trained>();
            t->source = it->second;
            t->w = store.read_f32(it->second->name);
            double sq = 0;
            for (float x : t->w) sq += double(x) * x;
            t->rms = std::sqrt(sq / double(std::max<size_t>(t->w.size(), 1)));
            if (!(t->rms > 0)) t->rms = 1.0;  // an all-zero tensor steps in absolute units
            t->grad.assign(t->w.size(), 0.0f);
            t->m.assign(t->w.size(), 0.0f);
            t->v.assign(t->w.size(), 0.0f);
            set.tensors.push_back(std::move(t));
        }
    }
    std::unordered_map<std::string, Trained*> by_name;
    for (auto& t : set.tensors) by_name[t->source->name] = t.get();
    std::vector<TensorView> views;
    for (const std::string& n : store.names()) {
        TensorView v = store.get(n);
        if (auto it = by_name.find(n); it != by_name.end()) {
            v.dtype = DType::F32;
            v.data = reinterpret_cast<const uint8_t*>(it->second->w.data());
            v.nbytes = it->second->w.size() * sizeof(float);
            v.file = nullptr;
            set.by_data[v.data] = it->second;
        }
        views.push_back(std::move(v));
    }
    auto live = TensorStore::from_views(moe.dir, std::move(views), nullptr);
    auto model = Model::load(moe.config, *live);
    Backprop backprop(*model);

    // Distillation: the teacher's next-token probabilities of each window, [T-1, V].
    std::unique_ptr<Checkpoint> teacher_ck;
    std::unique_ptr<Model> teacher;
    if (!opt.teacher_dir.empty()) {
        teacher_ck = std::make_unique<Checkpoint>(Checkpoint::open(opt.teacher_dir));
        if (teacher_ck->config.vocab_size != moe.config.vocab_size || teacher_ck->config.hidden_size != moe.config.hidden_size)
            fail("{}: the teacher has vocabulary {} and hidden size {}, the MoE model {} and {}: not its source model",
                 opt.teacher_dir, teacher_ck->config.vocab_size, teacher_ck->config.hidden_size, moe.config.vocab_size,
                 moe.config.hidden_size);
        teacher = Model::load(*teacher_ck);
    }
    std::vector<float> probs;
    auto teacher_probs = [&](const TokenWindow& w) -> const float* {
        if (!teacher) return nullptr;
        const size_t T = w.size(), V = size_t(moe.config.vocab_size);
        probs.resize(T * V);
        teacher->forward(w.data(), int(T), 0, nullptr, probs.data());
        for (size_t t = 0; t + 1 < T; ++t) {
            float* p = probs.data() + t * V;
            const float mx = *std::max_element(p, p + V);
            double z = 0;
            for (size_t j = 0; j < V; ++j) z += std::exp(double(p[j] - mx));
            for (size_t j = 0; j < V; ++j) p[j] = float(std::exp(double(p[j] - mx)) / z);
        }
        return probs.data();
    };

    HealResult r;
    r.trained_params = set.params();
    r.train_windows = train.size();
    r.heldout_windows = heldout.size();
    for (const TokenWindow* w : heldout) r.heldout_tokens += w->size() - 1;
    r.heldout_nll_before = mean_nll(*model, heldout);

    // Training windows in a shuffled order, reshuffled on each pass.
    std::vector<size_t> order(train.size());
    std::iota(order.begin(), order.end(), size_t(0));
    Rng rng(opt.seed, 0x4845414c);  // "HEAL"
    auto shuffle = [&] {
        for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[size_t(rng.below(i))]);
    };
    shuffle();
    size_t next = 0;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int step = 0; step < opt.steps; ++step) {
        set.zero_grads();
        double loss = 0;
        for (int a = 0; a < opt.accumulate; ++a) {
            if (next == order.size()) shuffle(), next = 0;
            const TokenWindow& w = *train[order[next++]];
            loss += backprop.run(w.data(), int(w.size()), nullptr, nullptr, &set, teacher_probs(w)) / double(w.size() - 1);
        }
        loss /= opt.accumulate;
        // Mean over the step's windows, clipped to the global norm.
        double sq = 0;
        for (const auto& t : set.tensors)
            for (float g : t->grad) sq += double(g) * g;
        const double norm = std::sqrt(sq) / opt.accumulate;
        double gscale = 1.0 / opt.accumulate;
        if (opt.clip_norm > 0 && norm > opt.clip_norm) gscale *= opt.clip_norm / norm;
        if (!std::isfinite(norm)) fail("heal: the gradient is not finite at step {} (loss {})", step + 1, loss);
        const double lr = learning_rate(opt, step);
        const double c1 = 1.0 - std::pow(b1, step + 1), c2 = 1.0 - std::pow(b2, step + 1);
        for (auto& t : set.tensors) {
            const double step_size = lr * t->rms;
            for (size_t i = 0; i < t->w.size(); ++i) {
                const double g = double(t->grad[i]) * gscale;
                t->m[i] = float(b1 * t->m[i] + (1 - b1) * g);
                t->v[i] = float(b2 * t->v[i] + (1 - b2) * g * g);
                t->w[i] -= float(step_size * (t->m[i] / c1) / (std::sqrt(t->v[i] / c2) + eps));
            }
        }
        if (step == 0) r.first_loss = loss;
        r.last_loss = loss;
        r.steps = step + 1;
        if (progress) progress(step + 1, opt.steps, loss);
    }

    // What is written: the masters rounded to the stored dtype; measured as such.
    for (auto& t : set.tensors) {
        if (t->source->dtype == DType::F32) continue;
        std::vector<uint8_t> buf(t->source->nbytes);
        from_f32(t->source->dtype, t->w.data(), buf.data(), t->w.size());
        to_f32(t->source->dtype, buf.data(), t->w.data(), t->w.size());
    }
    r.heldout_nll_after = mean_nll(*model, heldout);
    if (fs::is_directory(moe.dir)) {
        write_healed(moe, set, opt);
    } else {
        write_healed_gguf(moe, set, opt);
    }
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return r;
}

}  // namespace moefy
