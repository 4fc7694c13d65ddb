/* Dtype names and conversions against known bit patterns. */
#include <math.h>
#include <string.h>

#include "testutil.h"

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

START_TEST(names_sizes_parse)
{
    ck_assert_uint_eq(lm_dtype_size(LM_F32), 4);
    ck_assert_uint_eq(lm_dtype_size(LM_F16), 2);
    ck_assert_uint_eq(lm_dtype_size(LM_BF16), 2);
    ck_assert_uint_eq(lm_dtype_size(LM_F64), 8);
    ck_assert_uint_eq(lm_dtype_size((lm_dtype)9), 0);
    ck_assert_str_eq(lm_dtype_name(LM_BF16), "bf16");
    ck_assert_str_eq(lm_dtype_name((lm_dtype)9), "?");
    lm_dtype d;
    ck_assert_ok(lm_dtype_parse("BF16", &d));
    ck_assert_int_eq(d, LM_BF16);
    ck_assert_ok(lm_dtype_parse("float16", &d));
    ck_assert_int_eq(d, LM_F16);
    ck_assert_ok(lm_dtype_parse("F64", &d));
    ck_assert_int_eq(d, LM_F64);
    ck_assert_status(lm_dtype_parse("int8", &d), LM_ERR_DTYPE);
    ck_assert_status(lm_dtype_parse(NULL, &d), LM_ERR_INVALID_ARGUMENT);
}
END_TEST

/* Hand-derived binary16 encodings, including every rounding boundary. */
START_TEST(f32_to_f16_bits)
{
    static const struct { uint32_t f32; uint16_t f16; } cases[] = {
        {0x00000000u, 0x0000}, /* +0 */
        {0x80000000u, 0x8000}, /* -0 */
        {0x3f800000u, 0x3c00}, /* 1 */
        {0xc0000000u, 0xc000}, /* -2 */
        {0x3dcccccdu, 0x2e66}, /* 0.1 */
        {0x477fe000u, 0x7bff}, /* 65504, largest finite */
        {0x477fefffu, 0x7bff}, /* just below the overflow midpoint */
        {0x477ff000u, 0x7c00}, /* 65520 ties to even = Inf */
        {0x7f800000u, 0x7c00}, /* +Inf */
        {0xff800000u, 0xfc00}, /* -Inf */
        {0x38800000u, 0x0400}, /* 2^-14, smallest normal */
        {0x33800000u, 0x0001}, /* 2^-24, smallest subnormal */
        {0x33000000u, 0x0000}, /* 2^-25: tie, rounds to even 0 */
        {0x33000001u, 0x0001}, /* just above 2^-25 rounds up */
        {0x33c00000u, 0x0002}, /* 1.5 * 2^-24: tie to even 2 */
        {0x387fe000u, 0x0400}, /* 2^-14 - 2^-25: tie between 0x3ff and
                                  0x400, to even 0x400 */
        {0x387fc000u, 0x03ff}, /* 1023 * 2^-24, largest subnormal */
        {0x3f801000u, 0x3c00}, /* 1 + 2^-11: tie to even 1 */
        {0x3f803000u, 0x3c02}, /* 1 + 3*2^-11: tie to even 0x3c02 */
        {0x3f801001u, 0x3c01}, /* just above the tie rounds up */
        {0x00000001u, 0x0000}, /* f32 subnormal underflows */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(lm_f32_to_f16(f32_from_bits(cases[i].f32)) ==
                          cases[i].f16,
                      "f32 0x%08x -> f16 0x%04x, wanted 0x%04x",
                      cases[i].f32, lm_f32_to_f16(f32_from_bits(cases[i].f32)),
                      cases[i].f16);
    uint16_t nan = lm_f32_to_f16(f32_from_bits(0x7f800001u));
    ck_assert_uint_eq(nan & 0x7c00u, 0x7c00u);
    ck_assert_uint_ne(nan & 0x03ffu, 0);
}
END_TEST

START_TEST(f16_to_f32_exhaustive_round_trip)
{
    /* Every finite f16 widens exactly and narrows back to itself. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu))
            continue; /* NaN payloads */
        float f = lm_f16_to_f32((uint16_t)h);
        tu_check(lm_f32_to_f16(f) == h,
                 "f16 0x%04x does not survive f32 and back", (unsigned)h);
    }
    ck_assert(lm_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    ck_assert(lm_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(isinf(lm_f16_to_f32(0xfc00)) && lm_f16_to_f32(0xfc00) < 0);
    ck_assert(isnan(lm_f16_to_f32(0x7e00)));
    ck_assert(signbit(lm_f16_to_f32(0x8000)));
}
END_TEST

START_TEST(f32_to_bf16_bits)
{
    static const struct { uint32_t f32; uint16_t bf16; } cases[] = {
        {0x3f800000u, 0x3f80}, /* 1 */
        {0x3f808000u, 0x3f80}, /* 1 + 2^-8: tie to even */
        {0x3f818000u, 0x3f82}, /* 1 + 3*2^-8: tie to even (up) */
        {0x3f808001u, 0x3f81}, /* just above the tie */
        {0x40490fdbu, 0x4049}, /* pi */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to Inf */
        {0x80000000u, 0x8000}, /* -0 */
        {0xff800000u, 0xff80}, /* -Inf */
        {0x00010000u, 0x0001}, /* subnormal kept */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(lm_f32_to_bf16(f32_from_bits(cases[i].f32)) ==
                          cases[i].bf16,
                      "f32 0x%08x -> bf16 0x%04x, wanted 0x%04x",
                      cases[i].f32,
                      lm_f32_to_bf16(f32_from_bits(cases[i].f32)),
                      cases[i].bf16);
    /* A signalling NaN stays NaN (never becomes Inf). */
    uint16_t nan = lm_f32_to_bf16(f32_from_bits(0x7f800001u));
    ck_assert_uint_eq(nan & 0x7f80u, 0x7f80u);
    ck_assert_uint_ne(nan & 0x007fu, 0);
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if ((h & 0x7f80u) == 0x7f80u && (h & 0x7fu))
            continue;
        tu_check(lm_f32_to_bf16(lm_bf16_to_f32((uint16_t)h)) == h,
                 "bf16 0x%04x does not survive f32 and back", (unsigned)h);
    }
}
END_TEST

/* f64 narrows with one rounding: through f32 these would round wrongly. */
START_TEST(f64_narrowing_rounds_once)
{
    double v = 1.0 + ldexp(1.0, -8) + ldexp(1.0, -30);
    uint16_t b;
    ck_assert_ok(lm_convert(&v, LM_F64, &b, LM_BF16, 1));
    ck_assert_uint_eq(b, 0x3f81);
    /* Via f32 the 2^-30 is lost and the tie goes to even 0x3f80. */
    ck_assert_uint_eq(lm_f32_to_bf16((float)v), 0x3f80);

    double w = 1.0 + ldexp(1.0, -11) + ldexp(1.0, -40);
    uint16_t h;
    ck_assert_ok(lm_convert(&w, LM_F64, &h, LM_F16, 1));
    ck_assert_uint_eq(h, 0x3c01);

    double cases[] = {0.0, -0.0, 65504.0, 65520.0, 1e300, -1e-300,
                      ldexp(1.0, -24), ldexp(3.0, -26), INFINITY};
    uint16_t want[] = {0x0000, 0x8000, 0x7bff, 0x7c00, 0x7c00, 0x8000,
                       0x0001, 0x0001, 0x7c00};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_ok(lm_convert(&cases[i], LM_F64, &h, LM_F16, 1));
        ck_assert_msg(h == want[i], "f64 %g -> f16 0x%04x, wanted 0x%04x",
                      cases[i], h, want[i]);
    }
    double nan = NAN;
    ck_assert_ok(lm_convert(&nan, LM_F64, &h, LM_F16, 1));
    ck_assert(isnan(lm_f16_to_f32(h)));
}
END_TEST

/* Random f64 values: the direct path agrees with an exact reference built
 * from the two neighbouring f16 values. */
START_TEST(f64_to_f16_matches_nearest_neighbour)
{
    uint64_t s = 7;
    for (int i = 0; i < 20000; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        double v = ldexp((double)(s >> 11) / 9007199254740992.0 * 2 - 1,
                         (int)((s >> 3) % 40) - 26);
        uint16_t h;
        ck_assert_ok(lm_convert(&v, LM_F64, &h, LM_F16, 1));
        double got = lm_f16_to_f32(h);
        /* Neighbours of the result: no representable f16 is closer. */
        uint16_t up = (uint16_t)(h + 1), down = (uint16_t)(h - 1);
        double dg = fabs(got - v);
        if ((up & 0x7c00u) != 0x7c00u)
            tu_check(fabs((double)lm_f16_to_f32(up) - v) >= dg,
                     "%.17g -> f16 0x%04x: 0x%04x is closer", v, h, up);
        if ((h & 0x7fffu) != 0)
            tu_check(fabs((double)lm_f16_to_f32(down) - v) >= dg,
                     "%.17g -> f16 0x%04x: 0x%04x is closer", v, h, down);
    }
}
END_TEST

START_TEST(bulk_convert_all_pairs)
{
    const lm_dtype types[] = {LM_F32, LM_F16, LM_BF16, LM_F64};
    double src[5] = {1.0, -0.5, 0.25, 1024.0, -3.0}; /* exact everywhere */
    for (size_t a = 0; a < 4; a++) {
        for (size_t b = 0; b < 4; b++) {
            unsigned char sa[40], sb[40];
            double back[5];
            ck_assert_ok(lm_convert(src, LM_F64, sa, types[a], 5));
            ck_assert_ok(lm_convert(sa, types[a], sb, types[b], 5));
            ck_assert_ok(lm_convert(sb, types[b], back, LM_F64, 5));
            for (int i = 0; i < 5; i++)
                ck_assert(back[i] == src[i]);
        }
    }
    ck_assert_status(lm_convert(src, (lm_dtype)7, src, LM_F32, 1),
                     LM_ERR_DTYPE);
    ck_assert_status(lm_convert(NULL, LM_F32, src, LM_F32, 1),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_ok(lm_convert(NULL, LM_F32, NULL, LM_F16, 0));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, names_sizes_parse);
    tcase_add_test(tc, f32_to_f16_bits);
    tcase_add_test(tc, f16_to_f32_exhaustive_round_trip);
    tcase_add_test(tc, f32_to_bf16_bits);
    tcase_add_test(tc, f64_narrowing_rounds_once);
    tcase_add_test(tc, f64_to_f16_matches_nearest_neighbour);
    tcase_add_test(tc, bulk_convert_all_pairs);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
