// The C++ wrapper: every handle (Context, Tensor, Model, Lora, TaskVector,
// Stats, Projector, Plan, Merger, FileSink, OutputDir, Nsc) used once with
// results checked against values computed here by hand, move-only
// ownership, and errors surfacing as libmerge::Error with status and
// message. Built with -Wall -Wextra -Werror (meson warning_level 2, werror).
#define LIBMERGE_HPP_EXPERIMENTAL
#include "libmerge.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <unistd.h>

static int failures = 0, checks = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        checks++;                                                           \
        if (!(cond)) {                                                      \
            std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__,    \
                         #cond);                                            \
            failures++;                                                     \
        }                                                                   \
    } while (0)

// Runs `f`, expecting a libmerge::Error with `status` whose message
// contains `fragment`.
template <typename F>
static void expect_error(F f, lm_status status, const char *fragment, int line)
{
    try {
        f();
        std::fprintf(stderr, "FAIL line %d: no exception\n", line);
        failures++;
    } catch (const libmerge::Error &e) {
        if (e.status() != status || !std::strstr(e.what(), fragment)) {
            std::fprintf(stderr, "FAIL line %d: status %d, message '%s'\n", line,
                         (int)e.status(), e.what());
            failures++;
        }
    }
    checks++;
}
#define EXPECT_ERROR(stmt, status, fragment)                                \
    expect_error([&]() { stmt; }, status, fragment, __LINE__)

// Move-only: no handle can be copied (a copy would destroy twice).
static_assert(!std::is_copy_constructible<libmerge::Context>::value, "Context");
static_assert(!std::is_copy_constructible<libmerge::Tensor>::value, "Tensor");
static_assert(!std::is_copy_constructible<libmerge::Model>::value, "Model");
static_assert(!std::is_copy_constructible<libmerge::Plan>::value, "Plan");
static_assert(!std::is_copy_constructible<libmerge::Merger>::value, "Merger");
static_assert(!std::is_copy_constructible<libmerge::TaskVector>::value, "TaskVector");
static_assert(!std::is_copy_constructible<libmerge::Lora>::value, "Lora");
static_assert(!std::is_copy_constructible<libmerge::Stats>::value, "Stats");
static_assert(!std::is_copy_constructible<libmerge::Projector>::value, "Projector");
static_assert(!std::is_copy_constructible<libmerge::FileSink>::value, "FileSink");
static_assert(!std::is_copy_constructible<libmerge::OutputDir>::value, "OutputDir");
static_assert(!std::is_copy_constructible<libmerge::Nsc>::value, "Nsc");
static_assert(std::is_move_constructible<libmerge::Model>::value, "Model moves");
static_assert(std::is_move_constructible<libmerge::Plan>::value, "Plan moves");

static const float BASE[4] = {1, 2, 3, 4}, FT_A[4] = {2, 2, 3, 4}, FT_B[4] = {1, 2, 3, 6};

static libmerge::Model model_of(const libmerge::Context &ctx, const float *w)
{
    libmerge::Model m(ctx);
    m.add("w", LM_F32, {2, 2}, w, 4 * sizeof(float));
    return m;
}

static const float *f32(const libmerge::TensorView &t)
{
    return static_cast<const float *>(t.data());
}

static void test_plan_and_model(libmerge::Context &ctx)
{
    libmerge::Model mb = model_of(ctx, BASE), ma = model_of(ctx, FT_A), mc(ctx);
    float b[4] = {1, 2, 3, 6};
    mc.add_view("w", LM_F32, {2, 2}, b, sizeof(b));
    EXPECT(mc["w"].is_wrapped() && !mb["w"].is_wrapped());
    libmerge::Plan plan(ctx, "task_arithmetic");
    plan.set("lambda", 0.5).base(mb).add(ma).add(mc);
    EXPECT(plan.strategy() == "task_arithmetic" && plan.model_count() == 2);
    libmerge::Model out = plan.execute();
    const float *r = f32(out["w"]);
    // base + 0.5 * ((a - base) + (b - base))
    EXPECT(r[0] == 1.5f && r[1] == 2.0f && r[2] == 3.0f && r[3] == 5.0f);
    EXPECT(out.size() == 1 && out.name(0) == "w" && out.at(0).numel() == 4);
    EXPECT(out["w"].shape() == std::vector<int64_t>({2, 2}) && out["w"].dim(1) == 2);
    EXPECT(out["w"].at(std::vector<int64_t>{1, 1}) == 5.0);
    // Output dtype and per-tensor values.
    libmerge::Model half = libmerge::Plan(ctx, "task_arithmetic")
                               .base(mb).add(ma).add(mc)
                               .set_for("lambda", 2.0, "w")
                               .output_dtype(LM_F16)
                               .rows_policy(LM_ROWS_ERROR)
                               .nonfinite(LM_NONFINITE_ERROR)
                               .execute();
    // base + 2 * ((a - base) + (b - base)) for tensor w, in f16
    EXPECT(half["w"].dtype() == LM_F16 && half["w"].at(0) == 3.0 && half["w"].at(3) == 8.0);
    EXPECT_ERROR(libmerge::Plan(ctx, "no_such_method"), LM_ERR_NOT_FOUND, "no_such_method");
    EXPECT_ERROR(libmerge::Plan(ctx, "task_arithmetic").set("lambda", 99.0),
                 LM_ERR_OUT_OF_RANGE, "lambda");
    EXPECT_ERROR(out["missing"], LM_ERR_NOT_FOUND, "missing");
    // Search: merged w[3] = 4 + lambda * 2 (from b) peaks the score at
    // lambda = 0.35; golden section to tol 0.01.
    libmerge::Plan s(ctx, "task_arithmetic");
    s.base(mb).add(mc);
    lm_search_result best = s.search("lambda", [](double, const lm_model *m) {
        const float *w = static_cast<const float *>(lm_tensor_cdata(lm_model_at(m, 0)));
        return -(w[3] - 4.7) * (w[3] - 4.7);
    });
    EXPECT(std::fabs(best.best_value - 0.35) < 0.01 && best.evals > 0);
    bool rethrown = false;
    try {
        s.search("lambda", [](double, const lm_model *) -> double {
            throw std::logic_error("score failed");
        });
    } catch (const std::logic_error &) {
        rethrown = true;
    }
    EXPECT(rethrown);
    bool range = false;
    try {
        out.name(7);
    } catch (const std::out_of_range &) {
        range = true;
    }
    EXPECT(range);
}

static void test_tensor_and_files(libmerge::Context &ctx)
{
    libmerge::Tensor t(ctx, LM_F32, {3});
    EXPECT(t.numel() == 3 && t.nbytes() == 12 && t.at(1) == 0.0);
    t.set(1, 2.5);
    libmerge::Tensor c = t.clone(ctx);
    t.set(1, 0.0);
    EXPECT(c.at(1) == 2.5 && c.dtype() == LM_F32);
    EXPECT_ERROR(c.set(5, 1.0), LM_ERR_OUT_OF_RANGE, "");
    libmerge::Model m(ctx);
    m.add("x", std::move(c));
    m.set_metadata("who", "test");
    EXPECT(m.metadata_count() == 1 && m.metadata("who") == "test" &&
           m.metadata_at(0).first == "who");
    char dir[] = "/tmp/lm_hpp_XXXXXX";
    if (!mkdtemp(dir)) {
        EXPECT(false);
        return;
    }
    std::string path = std::string(dir) + "/m.safetensors";
    m.save(path);
    libmerge::Model back = libmerge::Model::open(ctx, path);
    EXPECT(back["x"].at(1) == 2.5);
    EXPECT_ERROR(libmerge::Model::open(ctx, std::string(dir) + "/none.safetensors"),
                 LM_ERR_IO, "none.safetensors");
    std::remove(path.c_str());
    rmdir(dir);
}

static lm_status read_twos(const char *, void *dst, size_t nbytes, void *user)
{
    float *f = static_cast<float *>(dst);
    for (size_t i = 0; i < nbytes / sizeof(float); i++)
        f[i] = 2.0f;
    ++*static_cast<int *>(user);
    return LM_OK;
}

static void test_lazy_lora_task_vector(libmerge::Context &ctx)
{
    libmerge::Model base = model_of(ctx, BASE), lazy(ctx);
    int reads = 0;
    lazy.add_lazy("w", LM_F32, {2, 2}, read_twos, &reads);
    libmerge::Model out = libmerge::Plan(ctx, "task_arithmetic").base(base).add(lazy).execute();
    EXPECT(reads == 1 && f32(out["w"])[3] == 2.0f); // 4 + (2 - 4)

    // LoRA: A [1, 2], B [2, 1], scale 0.5: update 0.5 * B A.
    libmerge::Lora lora(ctx);
    float a[2] = {1, 2}, b[2] = {3, 4};
    lora.add("w", libmerge::Tensor::wrap(ctx, LM_F32, {1, 2}, a, sizeof(a)),
             libmerge::Tensor::wrap(ctx, LM_F32, {2, 1}, b, sizeof(b)), 0.5);
    EXPECT(lora.size() == 1 && lora.at(0).target == "w" && lora.find("w").scale == 0.5);
    EXPECT(!lora.is_transposed("w"));
    libmerge::TaskVector tv = libmerge::TaskVector::from_lora(ctx, lora, base);
    const float *d = f32(tv["w"]);
    EXPECT(d[0] == 1.5f && d[1] == 3.0f && d[2] == 2.0f && d[3] == 4.0f);
    tv.scale(-2.0);
    EXPECT(f32(tv["w"])[3] == -8.0f && tv.size() == 1 && tv.name(0) == "w");
    libmerge::Model factored = libmerge::Plan(ctx, "task_arithmetic").base(base).add(lora).execute();
    EXPECT(f32(factored["w"])[3] == 8.0f); // 4 + 4
    libmerge::Model via_tv = libmerge::Plan(ctx, "task_arithmetic").base(base).add(tv).execute();
    EXPECT(f32(via_tv["w"])[3] == -4.0f); // 4 - 8
    libmerge::Model ft = model_of(ctx, FT_B);
    libmerge::TaskVector diff(ctx, base, ft);
    libmerge::Model dm = diff.to_model();
    libmerge::TaskVector again = libmerge::TaskVector::from_model(ctx, dm);
    EXPECT(f32(again["w"])[3] == 2.0f && f32(again["w"])[0] == 0.0f);
    EXPECT_ERROR(tv.scale(NAN), LM_ERR_OUT_OF_RANGE, "scale");
    EXPECT_ERROR(lora.find("nope"), LM_ERR_NOT_FOUND, "");
}

static void test_stats_projector(libmerge::Context &ctx)
{
    libmerge::Stats s(ctx), t(ctx);
    float rows[4] = {1, 0, 0, 2}; // two rows of d_in 2
    s.observe(0, "w", rows, 2, 2);
    libmerge::Stats::Entry e = s.find(0, "w");
    EXPECT(e.d_in == 2 && e.n_rows == 2 && e.gram[0] == 1.0 && e.gram[3] == 4.0 &&
           e.gram[1] == 0.0);
    double g[4] = {1, 0, 0, 1};
    t.add_gram(0, "w", g, 2, 3);
    libmerge::Tensor more(ctx, LM_F64, {1, 2});
    more.set(0, 1.0);
    t.observe(0, "w", more);
    s.merge(t);
    e = s.find(0, "w");
    EXPECT(e.n_rows == 6 && e.gram[0] == 3.0 && s.size() == 1 && s.key(0).second == "w");
    // Eigenvectors of X^T X / n: the larger eigenvalue (4+1)/6 along e2.
    libmerge::Projector p = libmerge::Projector::from_stats(ctx, s, 0, "w", 1);
    EXPECT(p.dim() == 2 && p.rank() == 1 && std::fabs(p.values()[0] - 5.0 / 6.0) < 1e-12);
    EXPECT(std::fabs(std::fabs(p.basis()[1]) - 1.0) < 1e-12);
    float x[2] = {3, 4}, y[2];
    p.project(x, 1, y);
    EXPECT(y[0] == 0.0f && y[1] == 4.0f);
    p.complement(x, 1, y);
    EXPECT(y[0] == 3.0f && y[1] == 0.0f);
    float m[4] = {2, 0, 0, 1};
    libmerge::Tensor mt = libmerge::Tensor::wrap(ctx, LM_F32, {2, 2}, m, sizeof(m));
    libmerge::Projector q = libmerge::Projector::from_tensor(ctx, mt.view(), LM_BASIS_LEFT, 1);
    EXPECT(q.rank() == 1 && std::fabs(q.values()[0] - 2.0) < 1e-12 &&
           std::fabs(q.energy() - 0.8) < 1e-12);
    // In a plan: keep only the e1 component of every row of each delta.
    libmerge::Model base = model_of(ctx, BASE), ft = model_of(ctx, FT_B);
    libmerge::Model out = libmerge::Plan(ctx, "task_arithmetic")
                              .base(base).add(ft)
                              .project("^w$", q, LM_PROJECT_ROWS, LM_PROJECTION_KEEP)
                              .execute();
    EXPECT(f32(out["w"])[3] == 4.0f); // the delta (0, 2) on row 2 is removed
    libmerge::Model plain = libmerge::Plan(ctx, "task_arithmetic")
                                .base(base).add(ft).project("^w$", q).clear_projections()
                                .execute();
    EXPECT(f32(plain["w"])[3] == 6.0f);
    EXPECT_ERROR(libmerge::Projector::from_tensor(ctx, mt.view(), LM_BASIS_LEFT, 3),
                 LM_ERR_OUT_OF_RANGE, "");
}

static void test_merger(libmerge::Context &ctx)
{
    libmerge::Model base = model_of(ctx, BASE), a = model_of(ctx, FT_A),
                    b = model_of(ctx, FT_B);
    libmerge::Plan plan(ctx, "ties");
    plan.set("density", 0.5).add(a).add(b);
    libmerge::Merger merger(ctx, plan);
    EXPECT(merger.touches("w") && !merger.touches("nope"));
    float w[4] = {1, 2, 3, 4};
    libmerge::Tensor t = libmerge::Tensor::wrap(ctx, LM_F32, {2, 2}, w, sizeof(w));
    merger.apply("w", t);
    libmerge::Tensor out(ctx, LM_F64, {2, 2});
    merger.apply_to("w", base["w"], out);
    libmerge::Plan offline(ctx, "ties");
    offline.set("density", 0.5).base(base).add(a).add(b);
    libmerge::Model want = offline.execute();
    EXPECT(std::memcmp(w, want["w"].data(), sizeof(w)) == 0);
    for (size_t i = 0; i < 4; i++)
        EXPECT(out.at(i) == (double)w[i]);
    libmerge::Tensor wrong(ctx, LM_F32, {3});
    EXPECT_ERROR(merger.apply("w", wrong), LM_ERR_SHAPE, "w");
}

static int cancel_after_one(size_t done, size_t, uint64_t, uint64_t, void *)
{
    return done >= 1;
}

static void test_sinks(libmerge::Context &ctx)
{
    char dir[] = "/tmp/lm_hpp_XXXXXX";
    if (!mkdtemp(dir)) {
        EXPECT(false);
        return;
    }
    libmerge::Model base = model_of(ctx, BASE), a = model_of(ctx, FT_A);
    std::string file = std::string(dir) + "/out.safetensors";
    {
        libmerge::FileSink sink = libmerge::FileSink::safetensors(ctx, file);
        libmerge::Plan(ctx, "task_arithmetic").base(base).add(a).execute_to(sink);
        EXPECT(sink.files().size() == 1 && sink.files()[0] == file);
        EXPECT_ERROR(sink.layout(0), LM_ERR_STATE, ""); // only between begin and end
    }
    EXPECT(libmerge::Model::open(ctx, file)["w"].at(0) == 2.0);
    std::string gguf = std::string(dir) + "/out.gguf";
    {
        libmerge::FileSink sink = libmerge::FileSink::gguf(ctx, gguf);
        libmerge::Plan(ctx, "task_arithmetic").base(base).add(a).execute_to(sink);
    }
    EXPECT(libmerge::Model::open(ctx, gguf)["w"].at(0) == 2.0);
    std::string dest = std::string(dir) + "/model";
    {
        libmerge::OutputDir out(ctx, dest);
        libmerge::FileSink sink = libmerge::FileSink::for_dir(ctx, out.path(), &base);
        libmerge::Plan(ctx, "task_arithmetic").base(base).add(a).execute_to(sink);
        EXPECT(access(dest.c_str(), F_OK) != 0); // nothing before commit
        out.commit();
    }
    EXPECT(libmerge::Model::open(ctx, dest)["w"].at(0) == 2.0);
    {
        libmerge::Model two(ctx);
        two.add("v", LM_F32, {2, 2}, BASE, sizeof(BASE));
        two.add("w", LM_F32, {2, 2}, BASE, sizeof(BASE));
        libmerge::Plan p(ctx, "task_arithmetic");
        p.base(two).add(two).progress(cancel_after_one, nullptr);
        EXPECT_ERROR(p.execute(), LM_ERR_CANCELLED, "");
    }
    EXPECT_ERROR(libmerge::OutputDir(ctx, dest), LM_ERR_EXISTS, "model");
    std::string cmd = std::string("rm -rf ") + dir;
    EXPECT(std::system(cmd.c_str()) == 0);
}

static void test_strategy_and_context()
{
    libmerge::Context ctx(2, 7);
    EXPECT(ctx.threads() == 2 && ctx.seed() == 7);
    // Elementwise max of the task vectors, written in C++.
    ctx.register_strategy("cpp_max", "elementwise max", [](const lm_tensor_job &job) {
        for (size_t i = 0; i < job.numel; i++) {
            float m = job.deltas[0][i];
            for (size_t t = 1; t < job.n_models; t++)
                m = job.deltas[t][i] > m ? job.deltas[t][i] : m;
            job.out[i] = m;
        }
    });
    ctx.register_strategy("cpp_throw", "throws", [](const lm_tensor_job &) {
        throw std::runtime_error("boom");
    });
    EXPECT(ctx.strategy("cpp_max").description == std::string("elementwise max"));
    libmerge::Context moved(std::move(ctx)); // strategies move with it
    libmerge::Model base = model_of(moved, BASE), a = model_of(moved, FT_A),
                    b = model_of(moved, FT_B);
    libmerge::Model out = libmerge::Plan(moved, "cpp_max").base(base).add(a).add(b).execute();
    const float *r = f32(out["w"]);
    EXPECT(r[0] == 2.0f && r[1] == 2.0f && r[2] == 3.0f && r[3] == 6.0f);
    EXPECT_ERROR(libmerge::Plan(moved, "cpp_throw").base(base).add(a).execute(),
                 LM_ERR_CALLBACK, "boom");
    EXPECT_ERROR(moved.register_strategy("ties", "", [](const lm_tensor_job &) {}),
                 LM_ERR_EXISTS, "ties");
    EXPECT_ERROR(moved.strategy("nope"), LM_ERR_NOT_FOUND, "");
    bool found = false;
    for (const std::string &m : moved.methods())
        found = found || m == "cpp_max";
    EXPECT(found);
}

static void test_nsc(libmerge::Context &ctx)
{
    libmerge::Lora l1(ctx), l2(ctx);
    float a1[2] = {1, 0}, b1[2] = {1, 1}, a2[2] = {0, 1}, b2[2] = {2, 0};
    l1.add("w", libmerge::Tensor::wrap(ctx, LM_F32, {1, 2}, a1, sizeof(a1)),
           libmerge::Tensor::wrap(ctx, LM_F32, {2, 1}, b1, sizeof(b1)), 1.0);
    l2.add("w", libmerge::Tensor::wrap(ctx, LM_F32, {1, 2}, a2, sizeof(a2)),
           libmerge::Tensor::wrap(ctx, LM_F32, {2, 1}, b2, sizeof(b2)), 1.0);
    libmerge::Nsc nsc(ctx, {&l1, &l2});
    EXPECT(nsc.task_count() == 2 && nsc.module_count() == 1 && nsc.module(0) == "w" &&
           nsc.find("w") == 0);
    nsc.set_lambdas(0, {1.0, 0.5});
    EXPECT(nsc.lambdas(0) == std::vector<double>({1.0, 0.5}));
    // A frozen module is not even weight-decayed; released, it is.
    nsc.set_frozen(0);
    nsc.step();
    EXPECT(nsc.lambdas(0) == std::vector<double>({1.0, 0.5}));
    nsc.set_frozen(0, false);
    nsc.step();
    EXPECT(nsc.lambdas(0)[0] < 1.0);
    EXPECT_ERROR(nsc.set_frozen(1), LM_ERR_OUT_OF_RANGE, "");
    nsc.set_lambdas(0, {1.0, 0.5});
    libmerge::Model base = model_of(ctx, BASE);
    libmerge::Tensor out(ctx, LM_F32, {2, 2});
    nsc.materialize(0, base["w"], out);
    // W0 + 1 * B1 A1 + 0.5 * B2 A2 = [1+1, 2+1; 3+1, 4] with B2 A2 = [0 2; 0 0]
    EXPECT(out.at(0) == 2.0 && out.at(1) == 3.0 && out.at(2) == 4.0 && out.at(3) == 4.0);
    EXPECT_ERROR(nsc.find("nope"), LM_ERR_NOT_FOUND, "");
    // Coefficient table round trip, then the `nsc` strategy reads it.
    char path[] = "/tmp/lm_hpp_nsc_XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0);
    close(fd);
    nsc.save_coefficients(path, {"first", "second"});
    nsc.set_lambdas(0, {0.0, 0.0});
    nsc.load_coefficients(path);
    EXPECT(nsc.lambdas(0) == std::vector<double>({1.0, 0.5}));
    libmerge::Model merged = libmerge::Plan(ctx, "nsc")
                                 .set("coefficients", path)
                                 .base(base).add(l1).add(l2)
                                 .execute();
    for (size_t i = 0; i < 4; i++)
        EXPECT(merged["w"].at(i) == out.at(i)); // same merge as materialize
    std::remove(path);
    EXPECT_ERROR(nsc.load_coefficients(path), LM_ERR_IO, "lm_hpp_nsc");
}

int main()
{
    libmerge::Context ctx(2);
    test_plan_and_model(ctx);
    test_tensor_and_files(ctx);
    test_lazy_lora_task_vector(ctx);
    test_stats_projector(ctx);
    test_merger(ctx);
    test_sinks(ctx);
    test_strategy_and_context();
    test_nsc(ctx);
    std::printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
