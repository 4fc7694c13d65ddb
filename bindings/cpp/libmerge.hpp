// libmerge C++ wrapper: RAII handles and exceptions over the C API.
// Header-only; C++11. Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
#ifndef LIBMERGE_HPP
#define LIBMERGE_HPP

#include <libmerge.h>
#include <libmerge/sys/strategy.h>

#include <cstdint>
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
inline void check(lm_status st, const lm_context *ctx)
{
    if (st == LM_OK)
        return;
    std::string msg = lm_strerror(st);
    if (ctx && *lm_context_error(ctx))
        msg += std::string(": ") + lm_context_error(ctx);
    throw Error(st, msg);
}
template <typename T, void (*Destroy)(T *)> struct Deleter {
    void operator()(T *p) const noexcept { Destroy(p); }
};
} // namespace detail

class Context {
public:
    explicit Context(int n_threads = 0, uint64_t seed = 0)
    {
        lm_context_options o = LM_CONTEXT_OPTIONS_INIT;
        o.n_threads = n_threads;
        o.seed = seed;
        lm_context *c = nullptr;
        detail::check(lm_context_create(&o, &c), nullptr);
        ctx_.reset(c);
    }
    lm_context *get() const noexcept { return ctx_.get(); }
    int threads() const noexcept { return lm_context_threads(ctx_.get()); }
    void check(lm_status st) const { detail::check(st, ctx_.get()); }
    std::vector<std::string> methods() const
    {
        std::vector<std::string> names;
        for (size_t i = 0; i < lm_strategy_count(ctx_.get()); i++)
            names.push_back(lm_strategy_at(ctx_.get(), i)->name);
        return names;
    }

private:
    std::unique_ptr<lm_context, detail::Deleter<lm_context, lm_context_destroy>> ctx_;
};

// A non-owning view of a tensor that belongs to a Model.
class TensorView {
public:
    explicit TensorView(const lm_tensor *t) : t_(t) {}
    lm_dtype dtype() const noexcept { return lm_tensor_dtype(t_); }
    std::vector<int64_t> shape() const
    {
        const int64_t *s = lm_tensor_shape(t_);
        return std::vector<int64_t>(s, s + lm_tensor_ndim(t_));
    }
    size_t numel() const noexcept { return lm_tensor_numel(t_); }
    const void *data() const noexcept { return lm_tensor_cdata(t_); }
    double at(size_t i) const
    {
        double v = 0;
        detail::check(lm_tensor_get(t_, i, &v), nullptr);
        return v;
    }

private:
    const lm_tensor *t_;
};

class Model {
public:
    explicit Model(const Context &ctx) : ctx_(&ctx)
    {
        lm_model *m = nullptr;
        ctx.check(lm_model_create(ctx.get(), &m));
        m_.reset(m);
    }
    // Adopts a model handle (e.g. a merge result).
    Model(const Context &ctx, lm_model *adopt) : ctx_(&ctx), m_(adopt) {}

    // Copies `data` into a new tensor owned by the model.
    void add(const std::string &name, lm_dtype dtype,
             const std::vector<int64_t> &shape, const void *data, size_t nbytes)
    {
        lm_tensor *t = nullptr;
        ctx_->check(lm_tensor_wrap(ctx_->get(), dtype, (int)shape.size(),
                                   shape.data(), const_cast<void *>(data),
                                   nbytes, &t));
        lm_tensor *copy = nullptr;
        lm_status st = lm_tensor_clone(ctx_->get(), t, &copy);
        lm_tensor_destroy(t);
        ctx_->check(st);
        st = lm_model_add(m_.get(), name.c_str(), copy);
        if (st != LM_OK)
            lm_tensor_destroy(copy);
        ctx_->check(st);
    }
    // Wraps caller memory without copying; it must outlive the model.
    void add_view(const std::string &name, lm_dtype dtype,
                  const std::vector<int64_t> &shape, void *data, size_t nbytes)
    {
        lm_tensor *t = nullptr;
        ctx_->check(lm_tensor_wrap(ctx_->get(), dtype, (int)shape.size(),
                                   shape.data(), data, nbytes, &t));
        lm_status st = lm_model_add(m_.get(), name.c_str(), t);
        if (st != LM_OK)
            lm_tensor_destroy(t);
        ctx_->check(st);
    }
    size_t size() const noexcept { return lm_model_count(m_.get()); }
    std::string name(size_t i) const
    {
        const char *n = lm_model_name_at(m_.get(), i);
        if (!n)
            throw std::out_of_range("libmerge::Model::name");
        return n;
    }
    TensorView operator[](const std::string &name) const
    {
        lm_tensor *t = nullptr;
        ctx_->check(lm_model_find(m_.get(), name.c_str(), &t));
        return TensorView(t);
    }
    const lm_model *get() const noexcept { return m_.get(); }

private:
    const Context *ctx_;
    std::unique_ptr<lm_model, detail::Deleter<lm_model, lm_model_destroy>> m_;
};

class Plan {
public:
    Plan(const Context &ctx, const std::string &method) : ctx_(&ctx)
    {
        lm_plan *p = nullptr;
        ctx.check(lm_plan_create(ctx.get(), method.c_str(), &p));
        p_.reset(p);
    }
    Plan &set(const std::string &name, double value)
    {
        ctx_->check(lm_plan_set_float(p_.get(), name.c_str(), value));
        return *this;
    }
    Plan &set(const std::string &name, const std::string &value)
    {
        ctx_->check(lm_plan_set_string(p_.get(), name.c_str(), value.c_str()));
        return *this;
    }
    Plan &base(const Model &m)
    {
        ctx_->check(lm_plan_set_base(p_.get(), m.get()));
        return *this;
    }
    Plan &add(const Model &m, double weight = 1.0)
    {
        ctx_->check(lm_plan_add_model(p_.get(), m.get(), weight));
        return *this;
    }
    Model execute() const
    {
        lm_model *out = nullptr;
        ctx_->check(lm_plan_execute(p_.get(), &out));
        return Model(*ctx_, out);
    }

private:
    const Context *ctx_;
    std::unique_ptr<lm_plan, detail::Deleter<lm_plan, lm_plan_destroy>> p_;
};

} // namespace libmerge

#endif // LIBMERGE_HPP
