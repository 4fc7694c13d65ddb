// libmerge C++ wrapper: RAII handles and exceptions over the C API.
// Header-only; C++11. Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
//
// Every handle of the C API has a move-only owner here (Context, Tensor,
// Model, TaskVector, Lora, Stats, Projector, Plan, Merger, FileSink,
// OutputDir; Nsc with LIBMERGE_HPP_EXPERIMENTAL defined); every failing
// call throws libmerge::Error carrying the lm_status and the context's
// detailed message. Objects keep the C context of their Context, which
// must outlive them (a Context may be moved meanwhile); borrowed inputs (models a plan reads, the plan a merger
// uses) must outlive their borrowers, as in C. get() exposes the C handle
// for anything not wrapped.
#ifndef LIBMERGE_HPP
#define LIBMERGE_HPP

#include <libmerge.h>
#include <libmerge/sys/strategy.h>
#ifdef LIBMERGE_HPP_EXPERIMENTAL
#include <libmerge/experimental/nsc.h>
#endif

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace libmerge {

// Every failing call throws this, with the status and the context's
// detailed message.
class Error : public std::runtime_error {
public:
    Error(lm_status status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    lm_status status() const noexcept { return status_; }

private:
    lm_status status_;
};

namespace detail {
// The message is copied (thread-safe) and the context's error cleared, so
// a later failure never shows a stale message.
inline void check(lm_status st, const lm_context *ctx)
{
    if (st == LM_OK)
        return;
    std::string msg = lm_strerror(st);
    if (ctx) {
        size_t n = lm_context_copy_error(ctx, nullptr, 0);
        if (n) {
            std::vector<char> buf(n + 1);
            lm_context_copy_error(ctx, buf.data(), buf.size());
            msg += std::string(": ") + buf.data();
        }
        lm_context_clear_error(const_cast<lm_context *>(ctx));
    }
    throw Error(st, msg);
}
template <typename T, void (*Destroy)(T *)> struct Deleter {
    void operator()(T *p) const noexcept { Destroy(p); }
};
template <typename T, void (*Destroy)(T *)>
using Owner = std::unique_ptr<T, Deleter<T, Destroy>>;
} // namespace detail

class Context;

// A strategy written in C++: merge_tensor fills job.out with the merged
// task vector of one tensor (see lm_tensor_job). Called concurrently from
// worker threads. An exception becomes LM_ERR_CALLBACK with its what().
using MergeTensorFn = std::function<void(const lm_tensor_job &job)>;

class Context {
public:
    explicit Context(int n_threads = 0, uint64_t seed = 0)
    {
        lm_context_options o;
        lm_context_options_init(&o);
        o.n_threads = n_threads;
        o.seed = seed;
        init(o);
    }
    explicit Context(const lm_context_options &options) { init(options); }
    lm_context *get() const noexcept { return ctx_.get(); }
    int threads() const noexcept { return lm_context_threads(ctx_.get()); }
    uint64_t seed() const noexcept { return lm_context_seed(ctx_.get()); }
    void check(lm_status st) const { detail::check(st, ctx_.get()); }
    std::vector<std::string> methods() const
    {
        std::vector<std::string> names;
        for (size_t i = 0; i < lm_strategy_count(ctx_.get()); i++)
            names.push_back(lm_strategy_at(ctx_.get(), i)->name);
        return names;
    }
    const lm_strategy_vtable &strategy(const std::string &name) const
    {
        const lm_strategy_vtable *vt = nullptr;
        check(lm_strategy_find(ctx_.get(), name.c_str(), &vt));
        return *vt;
    }
    // A plugin's vtable (its strings and params must outlive the context).
    void register_strategy(const lm_strategy_vtable &vtable)
    {
        check(lm_register_strategy(ctx_.get(), &vtable));
    }
    // A strategy from a C++ callable; the context keeps the callable, the
    // name, description and parameter table alive. `params` may be empty;
    // its string fields must be literals (or otherwise outlive the context).
    void register_strategy(const std::string &name, const std::string &description,
                           MergeTensorFn fn,
                           const std::vector<lm_param_desc> &params = {})
    {
        std::unique_ptr<Registered> r(new Registered);
        r->name = name;
        r->description = description;
        r->params = params;
        r->fn = std::move(fn);
        lm_strategy_vtable vt;
        vt = lm_strategy_vtable();
        vt.struct_size = sizeof vt;
        vt.abi_version = LM_STRATEGY_ABI_VERSION;
        vt.name = r->name.c_str();
        vt.description = r->description.c_str();
        vt.params = r->params.empty() ? nullptr : r->params.data();
        vt.n_params = r->params.size();
        vt.merge_tensor = &Registered::merge;
        vt.user = r.get();
        check(lm_register_strategy(ctx_.get(), &vt));
        registered_.push_back(std::move(r));
    }

private:
    struct Registered {
        std::string name, description;
        std::vector<lm_param_desc> params;
        MergeTensorFn fn;
        static lm_status merge(void *, const lm_tensor_job *job, void *user)
        {
            try {
                static_cast<Registered *>(user)->fn(*job);
                return LM_OK;
            } catch (const std::exception &e) {
                return lm_context_set_error(job->ctx, LM_ERR_CALLBACK,
                                            "strategy on tensor '%s': %s",
                                            job->name, e.what());
            } catch (...) {
                return lm_context_set_error(job->ctx, LM_ERR_CALLBACK,
                                            "strategy on tensor '%s': unknown "
                                            "exception", job->name);
            }
        }
    };
    void init(const lm_context_options &o)
    {
        lm_context *c = nullptr;
        detail::check(lm_context_create(&o, &c), nullptr);
        ctx_.reset(c);
    }
    // Declared first, destroyed last: the context may call them until it
    // is destroyed.
    std::vector<std::unique_ptr<Registered>> registered_;
    detail::Owner<lm_context, lm_context_destroy> ctx_;
};

// A non-owning view of a tensor that belongs to a model, task vector or
// adapter.
class TensorView {
public:
    explicit TensorView(const lm_tensor *t) : t_(t) {}
    lm_dtype dtype() const noexcept { return lm_tensor_dtype(t_); }
    int ndim() const noexcept { return lm_tensor_ndim(t_); }
    int64_t dim(int i) const noexcept { return lm_tensor_dim(t_, i); }
    std::vector<int64_t> shape() const
    {
        const int64_t *s = lm_tensor_shape(t_);
        return std::vector<int64_t>(s, s + lm_tensor_ndim(t_));
    }
    size_t numel() const noexcept { return lm_tensor_numel(t_); }
    size_t nbytes() const noexcept { return lm_tensor_nbytes(t_); }
    bool is_wrapped() const noexcept { return lm_tensor_is_wrapped(t_) != 0; }
    const void *data() const noexcept { return lm_tensor_cdata(t_); }
    double at(size_t i) const
    {
        double v = 0;
        detail::check(lm_tensor_get(t_, i, &v), nullptr);
        return v;
    }
    double at(const std::vector<int64_t> &indices) const
    {
        if ((int)indices.size() != ndim())
            throw Error(LM_ERR_INVALID_ARGUMENT, "libmerge::TensorView::at: "
                                                 "one index per dimension");
        double v = 0;
        detail::check(lm_tensor_get_at(t_, indices.data(), &v), nullptr);
        return v;
    }
    const lm_tensor *get() const noexcept { return t_; }

private:
    const lm_tensor *t_;
};

// An owned tensor (lm_tensor_create / wrap / clone).
class Tensor {
public:
    // Zero-filled, owning its buffer.
    Tensor(const Context &ctx, lm_dtype dtype, const std::vector<int64_t> &shape)
    {
        lm_tensor *t = nullptr;
        ctx.check(lm_tensor_create(ctx.get(), dtype, (int)shape.size(), shape.data(), &t));
        t_.reset(t);
    }
    // Views caller memory (no copy); it must outlive the tensor.
    static Tensor wrap(const Context &ctx, lm_dtype dtype, const std::vector<int64_t> &shape,
                       void *data, size_t nbytes)
    {
        return wrap(ctx.get(), dtype, shape, data, nbytes);
    }
    static Tensor wrap(lm_context *ctx, lm_dtype dtype, const std::vector<int64_t> &shape,
                       void *data, size_t nbytes)
    {
        lm_tensor *t = nullptr;
        detail::check(lm_tensor_wrap(ctx, dtype, (int)shape.size(), shape.data(), data,
                                     nbytes, &t), ctx);
        return Tensor(t);
    }
    Tensor clone(const Context &ctx) const { return clone(ctx.get()); }
    Tensor clone(lm_context *ctx) const
    {
        lm_tensor *t = nullptr;
        detail::check(lm_tensor_clone(ctx, t_.get(), &t), ctx);
        return Tensor(t);
    }
    TensorView view() const noexcept { return TensorView(t_.get()); }
    lm_dtype dtype() const noexcept { return lm_tensor_dtype(t_.get()); }
    std::vector<int64_t> shape() const { return view().shape(); }
    size_t numel() const noexcept { return lm_tensor_numel(t_.get()); }
    size_t nbytes() const noexcept { return lm_tensor_nbytes(t_.get()); }
    void *data() noexcept { return lm_tensor_data(t_.get()); }
    const void *data() const noexcept { return lm_tensor_cdata(t_.get()); }
    double at(size_t i) const { return view().at(i); }
    void set(size_t i, double value)
    {
        detail::check(lm_tensor_set(t_.get(), i, value), nullptr);
    }
    lm_tensor *get() const noexcept { return t_.get(); }
    // Gives up ownership (e.g. to a model or adapter that takes it).
    lm_tensor *release() noexcept { return t_.release(); }

private:
    explicit Tensor(lm_tensor *t) : t_(t) {}
    detail::Owner<lm_tensor, lm_tensor_destroy> t_;
};

class Model {
public:
    explicit Model(const Context &ctx) : ctx_(ctx.get())
    {
        lm_model *m = nullptr;
        ctx.check(lm_model_create(ctx.get(), &m));
        m_.reset(m);
    }
    // Adopts a model handle (e.g. a merge result).
    Model(const Context &ctx, lm_model *adopt) : ctx_(ctx.get()), m_(adopt) {}
    Model(lm_context *ctx, lm_model *adopt) : ctx_(ctx), m_(adopt) {}
    // Any model file or directory libmerge reads (lm_model_open).
    static Model open(const Context &ctx, const std::string &path)
    {
        lm_model *m = nullptr;
        ctx.check(lm_model_open(ctx.get(), path.c_str(), &m));
        return Model(ctx, m);
    }
    // Writes by extension: .safetensors, .gguf or .npz (lm_model_save).
    void save(const std::string &path, unsigned flags = 0) const
    {
        detail::check(lm_model_save(ctx_, m_.get(), path.c_str(), flags), ctx_);
    }

    // Takes ownership of `t`.
    void add(const std::string &name, Tensor &&t)
    {
        detail::check(lm_model_add(m_.get(), name.c_str(), t.get()), ctx_);
        t.release();
    }
    // Copies `data` into a new tensor owned by the model.
    void add(const std::string &name, lm_dtype dtype,
             const std::vector<int64_t> &shape, const void *data, size_t nbytes)
    {
        Tensor view = Tensor::wrap(ctx_, dtype, shape, const_cast<void *>(data), nbytes);
        add(name, view.clone(ctx_));
    }
    // Wraps caller memory without copying; it must outlive the model.
    void add_view(const std::string &name, lm_dtype dtype,
                  const std::vector<int64_t> &shape, void *data, size_t nbytes)
    {
        add(name, Tensor::wrap(ctx_, dtype, shape, data, nbytes));
    }
    // Bytes read on demand by `read` (lm_model_add_lazy).
    void add_lazy(const std::string &name, lm_dtype dtype, const std::vector<int64_t> &shape,
                  lm_tensor_read_fn read, void *user)
    {
        detail::check(lm_model_add_lazy(m_.get(), name.c_str(), dtype, (int)shape.size(),
                                      shape.data(), read, user), ctx_);
    }
    size_t size() const noexcept { return lm_model_count(m_.get()); }
    std::string name(size_t i) const
    {
        const char *n = lm_model_name_at(m_.get(), i);
        if (!n)
            throw std::out_of_range("libmerge::Model::name");
        return n;
    }
    TensorView at(size_t i) const
    {
        const lm_tensor *t = lm_model_at(m_.get(), i);
        if (!t)
            throw std::out_of_range("libmerge::Model::at");
        return TensorView(t);
    }
    TensorView operator[](const std::string &name) const
    {
        lm_tensor *t = nullptr;
        detail::check(lm_model_find(m_.get(), name.c_str(), &t), ctx_);
        return TensorView(t);
    }
    void set_metadata(const std::string &key, const std::string &value)
    {
        detail::check(lm_model_set_metadata(m_.get(), key.c_str(), value.c_str()), ctx_);
    }
    size_t metadata_count() const noexcept { return lm_model_metadata_count(m_.get()); }
    std::pair<std::string, std::string> metadata_at(size_t i) const
    {
        const char *k = nullptr, *v = nullptr;
        detail::check(lm_model_metadata_at(m_.get(), i, &k, &v), ctx_);
        return std::make_pair(std::string(k), std::string(v));
    }
    std::string metadata(const std::string &key) const
    {
        const char *v = nullptr;
        detail::check(lm_model_metadata_find(m_.get(), key.c_str(), &v), ctx_);
        return v;
    }
    const lm_model *get() const noexcept { return m_.get(); }
    lm_model *get() noexcept { return m_.get(); }

private:
    lm_context *ctx_;
    detail::Owner<lm_model, lm_model_destroy> m_;
};

class Lora {
public:
    explicit Lora(const Context &ctx) : ctx_(ctx.get())
    {
        lm_lora *l = nullptr;
        ctx.check(lm_lora_create(ctx.get(), &l));
        l_.reset(l);
    }
    // A PEFT directory or llama.cpp GGUF adapter (lm_lora_open).
    static Lora open(const Context &ctx, const std::string &path)
    {
        lm_lora *l = nullptr;
        ctx.check(lm_lora_open(ctx.get(), path.c_str(), &l));
        return Lora(ctx, l);
    }
    // Takes ownership of a [r, in] and b [out, r]: update scale * B A.
    void add(const std::string &target, Tensor &&a, Tensor &&b, double scale)
    {
        detail::check(lm_lora_add(l_.get(), target.c_str(), a.get(), b.get(), scale), ctx_);
        a.release();
        b.release();
    }
    size_t size() const noexcept { return lm_lora_count(l_.get()); }
    struct Factors {
        std::string target;
        TensorView a, b;
        double scale;
    };
    Factors at(size_t i) const
    {
        const char *t = nullptr;
        const lm_tensor *a = nullptr, *b = nullptr;
        double s = 0;
        detail::check(lm_lora_at(l_.get(), i, &t, &a, &b, &s), ctx_);
        return Factors{t, TensorView(a), TensorView(b), s};
    }
    Factors find(const std::string &target) const
    {
        const lm_tensor *a = nullptr, *b = nullptr;
        double s = 0;
        detail::check(lm_lora_find(l_.get(), target.c_str(), &a, &b, &s), ctx_);
        return Factors{target, TensorView(a), TensorView(b), s};
    }
    void set_transposed(const std::string &target, bool transposed = true)
    {
        detail::check(lm_lora_set_transposed(l_.get(), target.c_str(), transposed ? 1 : 0), ctx_);
    }
    bool is_transposed(const std::string &target) const noexcept
    {
        return lm_lora_is_transposed(l_.get(), target.c_str()) != 0;
    }
    const lm_lora *get() const noexcept { return l_.get(); }

private:
    Lora(const Context &ctx, lm_lora *adopt) : ctx_(ctx.get()), l_(adopt) {}
    lm_context *ctx_;
    detail::Owner<lm_lora, lm_lora_destroy> l_;
};

class TaskVector {
public:
    // fine-tuned minus base, per tensor.
    TaskVector(const Context &ctx, const Model &base, const Model &finetuned) : ctx_(ctx.get())
    {
        lm_task_vector *tv = nullptr;
        ctx.check(lm_task_vector_create(ctx.get(), base.get(), finetuned.get(), &tv));
        tv_.reset(tv);
    }
    static TaskVector from_model(const Context &ctx, const Model &deltas)
    {
        lm_task_vector *tv = nullptr;
        ctx.check(lm_task_vector_from_model(ctx.get(), deltas.get(), &tv));
        return TaskVector(ctx, tv);
    }
    static TaskVector from_lora(const Context &ctx, const Lora &lora, const Model &base)
    {
        lm_task_vector *tv = nullptr;
        ctx.check(lm_task_vector_from_lora(ctx.get(), lora.get(), base.get(), &tv));
        return TaskVector(ctx, tv);
    }
    TaskVector &scale(double factor)
    {
        detail::check(lm_task_vector_scale(tv_.get(), factor), ctx_);
        return *this;
    }
    size_t size() const noexcept { return lm_task_vector_count(tv_.get()); }
    std::string name(size_t i) const
    {
        const char *n = lm_task_vector_name_at(tv_.get(), i);
        if (!n)
            throw std::out_of_range("libmerge::TaskVector::name");
        return n;
    }
    TensorView operator[](const std::string &name) const
    {
        const lm_tensor *t = nullptr;
        detail::check(lm_task_vector_find(tv_.get(), name.c_str(), &t), ctx_);
        return TensorView(t);
    }
    Model to_model() const
    {
        lm_model *m = nullptr;
        detail::check(lm_task_vector_to_model(tv_.get(), &m), ctx_);
        return Model(ctx_, m);
    }
    const lm_task_vector *get() const noexcept { return tv_.get(); }

private:
    TaskVector(const Context &ctx, lm_task_vector *adopt) : ctx_(ctx.get()), tv_(adopt) {}
    lm_context *ctx_;
    detail::Owner<lm_task_vector, lm_task_vector_destroy> tv_;
};

class Stats {
public:
    explicit Stats(const Context &ctx) : ctx_(ctx.get())
    {
        lm_stats *s = nullptr;
        ctx.check(lm_stats_create(ctx.get(), &s));
        s_.reset(s);
    }
    static Stats load(const Context &ctx, const std::string &path)
    {
        lm_stats *s = nullptr;
        ctx.check(lm_stats_load(ctx.get(), path.c_str(), &s));
        return Stats(ctx, s);
    }
    void save(const std::string &path) const
    {
        detail::check(lm_stats_save(s_.get(), path.c_str()), ctx_);
    }
    // n_rows rows of d_in floats fed to layer `name` of model `model`.
    void observe(size_t model, const std::string &name, const float *rows, size_t n_rows,
                 size_t d_in)
    {
        detail::check(lm_stats_observe(s_.get(), model, name.c_str(), rows, n_rows, d_in), ctx_);
    }
    void observe(size_t model, const std::string &name, const Tensor &rows)
    {
        detail::check(lm_stats_observe_tensor(s_.get(), model, name.c_str(), rows.get()), ctx_);
    }
    void add_gram(size_t model, const std::string &name, const double *gram, size_t d_in,
                  uint64_t n_rows)
    {
        detail::check(lm_stats_add_gram(s_.get(), model, name.c_str(), gram, d_in, n_rows), ctx_);
    }
    struct Entry {
        const double *gram; // d_in x d_in, owned by the stats
        size_t d_in;
        uint64_t n_rows;
    };
    Entry find(size_t model, const std::string &name) const
    {
        Entry e{nullptr, 0, 0};
        detail::check(lm_stats_find(s_.get(), model, name.c_str(), &e.gram, &e.d_in,
                                  &e.n_rows), ctx_);
        return e;
    }
    size_t size() const noexcept { return lm_stats_count(s_.get()); }
    std::pair<size_t, std::string> key(size_t i) const
    {
        size_t model = 0;
        const char *name = nullptr;
        detail::check(lm_stats_at(s_.get(), i, &model, &name), ctx_);
        return std::make_pair(model, std::string(name));
    }
    Stats &merge(const Stats &other)
    {
        detail::check(lm_stats_merge(s_.get(), other.get()), ctx_);
        return *this;
    }
    const lm_stats *get() const noexcept { return s_.get(); }

private:
    Stats(const Context &ctx, lm_stats *adopt) : ctx_(ctx.get()), s_(adopt) {}
    lm_context *ctx_;
    detail::Owner<lm_stats, lm_stats_destroy> s_;
};

class Projector {
public:
    // Top directions of a 2-D tensor (rank > 0, or the energy fraction).
    static Projector from_tensor(const Context &ctx, const TensorView &a, lm_basis basis,
                                 size_t rank, double energy = 0.0)
    {
        lm_projector *p = nullptr;
        ctx.check(lm_projector_from_tensor(ctx.get(), a.get(), basis, rank, energy, &p));
        return Projector(ctx, p);
    }
    // PCA of a layer's inputs.
    static Projector from_stats(const Context &ctx, const Stats &stats, size_t model,
                                const std::string &name, size_t rank, double energy = 0.0)
    {
        lm_projector *p = nullptr;
        ctx.check(lm_projector_from_stats(ctx.get(), stats.get(), model, name.c_str(), rank,
                                          energy, &p));
        return Projector(ctx, p);
    }
    size_t dim() const noexcept { return lm_projector_dim(p_.get()); }
    size_t rank() const noexcept { return lm_projector_rank(p_.get()); }
    double energy() const noexcept { return lm_projector_energy(p_.get()); }
    // dim x rank, row-major; and the rank kept values.
    const double *basis() const noexcept { return lm_projector_basis(p_.get()); }
    const double *values() const noexcept { return lm_projector_values(p_.get()); }
    // n vectors of length dim; in and out may alias.
    void project(const float *in, size_t n, float *out) const
    {
        detail::check(lm_projector_project(p_.get(), in, n, out), ctx_);
    }
    void complement(const float *in, size_t n, float *out) const
    {
        detail::check(lm_projector_complement(p_.get(), in, n, out), ctx_);
    }
    const lm_projector *get() const noexcept { return p_.get(); }

private:
    Projector(const Context &ctx, lm_projector *adopt) : ctx_(ctx.get()), p_(adopt) {}
    lm_context *ctx_;
    detail::Owner<lm_projector, lm_projector_destroy> p_;
};

// A streaming file sink for Plan::execute_to.
class FileSink {
public:
    static FileSink safetensors(const Context &ctx, const std::string &path,
                                const lm_safetensors_sink_options *options = nullptr)
    {
        lm_file_sink *s = nullptr;
        ctx.check(lm_safetensors_sink_create(ctx.get(), path.c_str(), options, &s));
        return FileSink(ctx, s);
    }
    static FileSink gguf(const Context &ctx, const std::string &path,
                         const lm_gguf_options *options = nullptr)
    {
        lm_file_sink *s = nullptr;
        ctx.check(lm_gguf_sink_create(ctx.get(), path.c_str(), options, &s));
        return FileSink(ctx, s);
    }
    // Into directory `dir`, in the format of `like` (lm_file_sink_create_for).
    static FileSink for_dir(const Context &ctx, const std::string &dir, const Model *like,
                            const lm_safetensors_sink_options *options = nullptr)
    {
        lm_file_sink *s = nullptr;
        ctx.check(lm_file_sink_create_for(ctx.get(), dir.c_str(), like ? like->get() : nullptr,
                                          options, &s));
        return FileSink(ctx, s);
    }
    const lm_sink_vtable *vtable() noexcept { return lm_file_sink_vtable(s_.get()); }
    // Between begin and end: where output tensor `index` goes.
    std::pair<std::string, uint64_t> layout(size_t index) const
    {
        const char *path = nullptr;
        uint64_t offset = 0;
        detail::check(lm_file_sink_layout(s_.get(), index, &path, &offset), ctx_);
        return std::make_pair(std::string(path), offset);
    }
    std::vector<std::string> files() const
    {
        std::vector<std::string> out;
        for (size_t i = 0; i < lm_file_sink_file_count(s_.get()); i++)
            out.push_back(lm_file_sink_file_at(s_.get(), i));
        return out;
    }
    lm_file_sink *get() const noexcept { return s_.get(); }

private:
    FileSink(const Context &ctx, lm_file_sink *adopt) : ctx_(ctx.get()), s_(adopt) {}
    lm_context *ctx_;
    detail::Owner<lm_file_sink, lm_file_sink_destroy> s_;
};

// A directory that appears complete at commit() or not at all.
class OutputDir {
public:
    OutputDir(const Context &ctx, const std::string &dest,
              const lm_output_dir_options *options = nullptr)
        : ctx_(ctx.get())
    {
        lm_output_dir *d = nullptr;
        ctx.check(lm_output_dir_begin(ctx.get(), dest.c_str(), options, &d));
        d_.reset(d);
    }
    // The staging directory to write into until commit.
    std::string path() const { return lm_output_dir_path(d_.get()); }
    void commit() { detail::check(lm_output_dir_commit(d_.get()), ctx_); }

private:
    lm_context *ctx_;
    detail::Owner<lm_output_dir, lm_output_dir_destroy> d_;
};

class Plan {
public:
    Plan(const Context &ctx, const std::string &method) : ctx_(ctx.get())
    {
        lm_plan *p = nullptr;
        ctx.check(lm_plan_create(ctx.get(), method.c_str(), &p));
        p_.reset(p);
    }
    std::string strategy() const { return lm_plan_strategy(p_.get()); }
    size_t model_count() const noexcept { return lm_plan_model_count(p_.get()); }
    Plan &set(const std::string &name, double value)
    {
        detail::check(lm_plan_set_float(p_.get(), name.c_str(), value), ctx_);
        return *this;
    }
    Plan &set(const std::string &name, const std::string &value)
    {
        detail::check(lm_plan_set_string(p_.get(), name.c_str(), value.c_str()), ctx_);
        return *this;
    }
    Plan &set(const std::string &name, const char *value)
    {
        return set(name, std::string(value));
    }
    // Per-tensor (tensor non-empty) and/or per-model (model != LM_ALL_MODELS).
    Plan &set_for(const std::string &name, double value, const std::string &tensor,
                  size_t model = LM_ALL_MODELS)
    {
        detail::check(lm_plan_set_float_for(p_.get(), name.c_str(), value,
                                          tensor.empty() ? nullptr : tensor.c_str(), model), ctx_);
        return *this;
    }
    // Borrowed inputs: they must outlive the plan's executions.
    Plan &base(const Model &m)
    {
        detail::check(lm_plan_set_base(p_.get(), m.get()), ctx_);
        return *this;
    }
    Plan &add(const Model &m, double weight = 1.0)
    {
        detail::check(lm_plan_add_model(p_.get(), m.get(), weight), ctx_);
        return *this;
    }
    Plan &add(const TaskVector &tv, double weight = 1.0)
    {
        detail::check(lm_plan_add_task_vector(p_.get(), tv.get(), weight), ctx_);
        return *this;
    }
    Plan &add(const Lora &lora, double weight = 1.0)
    {
        detail::check(lm_plan_add_lora(p_.get(), lora.get(), weight), ctx_);
        return *this;
    }
    Plan &stats(const Stats &s)
    {
        detail::check(lm_plan_set_stats(p_.get(), s.get()), ctx_);
        return *this;
    }
    Plan &tie(const std::string &tensor, const std::string &same_as)
    {
        detail::check(lm_plan_tie(p_.get(), tensor.c_str(), same_as.c_str()), ctx_);
        return *this;
    }
    Plan &transposed(const std::string &tensor)
    {
        detail::check(lm_plan_set_transposed(p_.get(), tensor.c_str()), ctx_);
        return *this;
    }
    Plan &output_dtype(lm_dtype dtype)
    {
        detail::check(lm_plan_set_output_dtype(p_.get(), dtype), ctx_);
        return *this;
    }
    Plan &rows_policy(lm_rows_policy policy)
    {
        detail::check(lm_plan_set_rows_policy(p_.get(), policy), ctx_);
        return *this;
    }
    Plan &nonfinite(lm_nonfinite_policy policy)
    {
        detail::check(lm_plan_set_nonfinite(p_.get(), policy), ctx_);
        return *this;
    }
    Plan &purify(const lm_purify_options &options)
    {
        detail::check(lm_plan_set_purify(p_.get(), &options), ctx_);
        return *this;
    }
    Plan &project(const std::string &pattern, const Projector &p,
                  lm_projection_side side = LM_PROJECT_ROWS,
                  lm_projection_mode mode = LM_PROJECTION_KEEP, size_t model = LM_ALL_MODELS)
    {
        detail::check(lm_plan_add_projection(p_.get(), pattern.c_str(), model, p.get(), side,
                                           mode), ctx_);
        return *this;
    }
    Plan &clear_projections()
    {
        detail::check(lm_plan_clear_projections(p_.get()), ctx_);
        return *this;
    }
    Plan &progress(lm_progress_fn fn, void *user)
    {
        detail::check(lm_plan_set_progress(p_.get(), fn, user), ctx_);
        return *this;
    }
    Model execute() const
    {
        lm_model *out = nullptr;
        detail::check(lm_plan_execute(p_.get(), &out), ctx_);
        return Model(ctx_, out);
    }
    void execute_to(const lm_sink_vtable *sink) const
    {
        detail::check(lm_plan_execute_to(p_.get(), sink), ctx_);
    }
    void execute_to(FileSink &sink) const { execute_to(sink.vtable()); }
    // Golden-section search of `param` maximising score(value, merged)
    // (lm_plan_search_with; options NULL: its defaults). An exception
    // thrown by `score` stops the search and is rethrown here.
    lm_search_result search(const std::string &param,
                            const std::function<double(double, const lm_model *)> &score,
                            const lm_search_options *options = nullptr)
    {
        struct Call {
            const std::function<double(double, const lm_model *)> *fn;
            std::exception_ptr error;
            static int run(double value, const lm_model *merged, double *out, void *user)
            {
                Call *c = static_cast<Call *>(user);
                try {
                    *out = (*c->fn)(value, merged);
                    return 0;
                } catch (...) {
                    c->error = std::current_exception();
                    return 1;
                }
            }
        } call{&score, nullptr};
        lm_search_result r;
        r = lm_search_result();
        r.struct_size = sizeof r;
        lm_status st = lm_plan_search_with(p_.get(), param.c_str(), options, &Call::run,
                                           &call, &r);
        if (call.error)
            std::rethrow_exception(call.error);
        detail::check(st, ctx_);
        return r;
    }
    lm_plan *get() const noexcept { return p_.get(); }

private:
    lm_context *ctx_;
    detail::Owner<lm_plan, lm_plan_destroy> p_;
};

// Load-time merging, tensor by tensor, from any number of loader threads.
// The plan must outlive the merger and stay unchanged.
class Merger {
public:
    Merger(const Context &ctx, Plan &plan) : ctx_(ctx.get())
    {
        lm_merger *m = nullptr;
        ctx.check(lm_merger_create(plan.get(), &m));
        m_.reset(m);
    }
    bool touches(const std::string &name) const noexcept
    {
        return lm_merger_touches(m_.get(), name.c_str()) != 0;
    }
    // In place: base values in, merged values out.
    void apply(const std::string &name, Tensor &tensor)
    {
        detail::check(lm_merger_apply(m_.get(), name.c_str(), tensor.get()), ctx_);
    }
    void apply_to(const std::string &name, const TensorView &base, Tensor &out)
    {
        detail::check(lm_merger_apply_to(m_.get(), name.c_str(), base.get(), out.get()), ctx_);
    }

private:
    lm_context *ctx_;
    detail::Owner<lm_merger, lm_merger_destroy> m_;
};

#ifdef LIBMERGE_HPP_EXPERIMENTAL
// NSC optimiser state (experimental tier, outside the ABI promise).
class Nsc {
public:
    Nsc(const Context &ctx, const std::vector<const Lora *> &adapters,
        const lm_nsc_options *options = nullptr)
        : ctx_(ctx.get())
    {
        std::vector<const lm_lora *> ptrs;
        for (const Lora *l : adapters)
            ptrs.push_back(l->get());
        lm_nsc *n = nullptr;
        ctx.check(lm_nsc_create(ctx.get(), ptrs.data(), ptrs.size(), options, &n));
        n_.reset(n);
    }
    size_t task_count() const noexcept { return lm_nsc_task_count(n_.get()); }
    size_t module_count() const noexcept { return lm_nsc_module_count(n_.get()); }
    std::string module(size_t i, int64_t *d_out = nullptr, int64_t *d_in = nullptr) const
    {
        const char *name = lm_nsc_module_at(n_.get(), i, d_out, d_in);
        if (!name)
            throw std::out_of_range("libmerge::Nsc::module");
        return name;
    }
    size_t find(const std::string &name) const
    {
        size_t i = 0;
        detail::check(lm_nsc_module_find(n_.get(), name.c_str(), &i), ctx_);
        return i;
    }
    std::vector<double> lambdas(size_t module) const
    {
        std::vector<double> out(task_count());
        detail::check(lm_nsc_get_lambdas(n_.get(), module, out.data()), ctx_);
        return out;
    }
    void set_lambdas(size_t module, const std::vector<double> &values)
    {
        if (values.size() != task_count())
            throw Error(LM_ERR_INVALID_ARGUMENT, "libmerge::Nsc::set_lambdas: one value "
                                                 "per task");
        detail::check(lm_nsc_set_lambdas(n_.get(), module, values.data()), ctx_);
    }
    // Takes `module`'s coefficients out of the optimisation (or back in).
    void set_frozen(size_t module, bool frozen = true)
    {
        detail::check(lm_nsc_set_frozen(n_.get(), module, frozen), ctx_);
    }
    // The merged weight of `module` into `out` from base weight `base`.
    void materialize(size_t module, const TensorView &base, Tensor &out) const
    {
        detail::check(lm_nsc_materialize(n_.get(), module, base.get(), out.get()), ctx_);
    }
    void step() { detail::check(lm_nsc_step(n_.get()), ctx_); }
    // The lambdas as a coefficient table for the `nsc` strategy (JSON,
    // written atomically); task names default to "task0", ...
    void save_coefficients(const std::string &path,
                           const std::vector<std::string> &task_names = {}) const
    {
        std::vector<const char *> names;
        for (const std::string &n : task_names)
            names.push_back(n.c_str());
        detail::check(lm_nsc_save_coefficients(n_.get(), path.c_str(),
                                               names.empty() ? nullptr : names.data()),
                      ctx_);
    }
    void load_coefficients(const std::string &path)
    {
        detail::check(lm_nsc_load_coefficients(n_.get(), path.c_str()), ctx_);
    }
    lm_nsc *get() const noexcept { return n_.get(); }

private:
    lm_context *ctx_;
    detail::Owner<lm_nsc, lm_nsc_destroy> n_;
};
#endif

} // namespace libmerge

#endif // LIBMERGE_HPP
