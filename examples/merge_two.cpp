// Merge two fine-tuned models into their base with TIES, through the C++
// wrapper (bindings/cpp/libmerge.hpp): RAII handles, errors as exceptions.
// Prints the merged tensor; exits 1 with the library's message on failure.
#include <cstdio>
#include <libmerge.hpp>

int main()
{
    try {
        libmerge::Context ctx;   // all cores, seed 0
        float base[4] = {1, 2, 3, 4}, ft_a[4] = {2, 2, 3, 3}, ft_b[4] = {1, 3, 3, 6};
        libmerge::Model mb(ctx), ma(ctx), mc(ctx);
        mb.add_view("layer.weight", LM_F32, {2, 2}, base, sizeof(base)); // no copy
        ma.add_view("layer.weight", LM_F32, {2, 2}, ft_a, sizeof(ft_a));
        mc.add_view("layer.weight", LM_F32, {2, 2}, ft_b, sizeof(ft_b));

        libmerge::Model merged = libmerge::Plan(ctx, "ties")
                                     .set("density", 1.0)
                                     .base(mb)
                                     .add(ma)
                                     .add(mc)
                                     .execute();
        libmerge::TensorView w = merged["layer.weight"];
        std::printf("merged:");
        for (size_t i = 0; i < w.numel(); i++)
            std::printf(" %g", w.at(i));
        std::printf("\n"); // 2 3 3 6: per element, the deltas agreeing with the elected sign
        return 0;
    } catch (const libmerge::Error &e) {
        std::fprintf(stderr, "merge failed (%d): %s\n", (int)e.status(), e.what());
        return 1;
    }
}
