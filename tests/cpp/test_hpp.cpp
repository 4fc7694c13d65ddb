// The C++ wrapper: a merge, and errors surfacing as libmerge::Error.
#include "libmerge.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>

static int failures = 0;
#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__,    \
                         #cond);                                            \
            failures++;                                                     \
        }                                                                   \
    } while (0)

int main()
{
    int passed = 0;
    libmerge::Context ctx(2);
    float base[4] = {1, 2, 3, 4}, a[4] = {2, 2, 3, 4}, b[4] = {1, 2, 3, 6};
    libmerge::Model mb(ctx), ma(ctx), mc(ctx);
    mb.add("w", LM_F32, {2, 2}, base, sizeof(base));
    ma.add_view("w", LM_F32, {2, 2}, a, sizeof(a));
    mc.add("w", LM_F32, {2, 2}, b, sizeof(b));
    libmerge::Model out = libmerge::Plan(ctx, "task_arithmetic")
                              .set("lambda", 0.5)
                              .base(mb)
                              .add(ma)
                              .add(mc)
                              .execute();
    const float *r = static_cast<const float *>(out["w"].data());
    EXPECT(r[0] == 1.5f && r[1] == 2.0f && r[2] == 3.0f && r[3] == 5.0f);
    EXPECT(out.size() == 1 && out.name(0) == "w");
    EXPECT(out["w"].shape() == std::vector<int64_t>({2, 2}));
    passed++;

    try {
        libmerge::Plan(ctx, "no_such_method");
        EXPECT(false);
    } catch (const libmerge::Error &e) {
        EXPECT(e.status() == LM_ERR_NOT_FOUND);
        EXPECT(std::strstr(e.what(), "no_such_method") != nullptr);
    }
    passed++;
    try {
        libmerge::Plan(ctx, "task_arithmetic").set("lambda", 99.0);
        EXPECT(false);
    } catch (const libmerge::Error &e) {
        EXPECT(e.status() == LM_ERR_OUT_OF_RANGE);
    }
    passed++;
    try {
        out["missing"];
        EXPECT(false);
    } catch (const libmerge::Error &e) {
        EXPECT(e.status() == LM_ERR_NOT_FOUND);
        EXPECT(std::strstr(e.what(), "missing") != nullptr);
    }
    passed++;
    EXPECT(!ctx.methods().empty());
    passed++;
    std::printf("%d passed, %d failed\n", passed - (failures ? 1 : 0),
                failures ? 1 : 0);
    return failures ? 1 : 0;
}
