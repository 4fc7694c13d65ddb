/* A symmetric eigendecomposition with vectors whose back-transformation
 * runs on the context's idle threads. syevd is sytrd (reduction to
 * tridiagonal form, A = Q T Q^T), stedc (T's eigenvectors Z) and ormtr
 * (Z <- Q Z); the last treats every column of Z on its own. Here Q's
 * reflectors are put in compact-WY form once (larft), and Z's columns
 * are cut into blocks fixed by n alone, each updated by the same sequence
 * of single-threaded BLAS calls (ormtr itself on a column block would
 * rebuild the WY form for every block: measured 2x slower in total). So
 * the bytes are the same for any thread count. syevd also rescales a
 * matrix whose largest entry is near under- or overflow; that case is
 * left to syevd itself (*used false). */
#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>

#include "linalg/linalg.h"

/* Columns of Z per item, and reflectors per compact-WY block. */
#define SPLIT_COLS 128
#define REFLECTORS 64

#define REAL float
#define ES_NAME split_f32
#define ES_L(x) LAPACKE_s##x
#define ES_B(x) cblas_s##x
#define ES_LOCAL(x) x##_f32
#include "linalg/eigh_split_impl.h"
#undef REAL
#undef ES_NAME
#undef ES_L
#undef ES_B
#undef ES_LOCAL

#define REAL double
#define ES_NAME split_f64
#define ES_L(x) LAPACKE_d##x
#define ES_B(x) cblas_d##x
#define ES_LOCAL(x) x##_f64
#include "linalg/eigh_split_impl.h"

/* Whether syevd would leave A unscaled: its largest |entry| within
 * [sqrt(safmin / eps), sqrt(eps / safmin)] (LAPACK's rmin, rmax), with a
 * factor 4 to spare. NaN fails. */
static bool unscaled(double anrm, double safmin, double eps)
{
    double rmin = sqrt(safmin / eps), rmax = sqrt(eps / safmin);
    return anrm == 0 || (anrm > 4 * rmin && anrm < rmax / 4);
}

lm_status lm__eigh_split(lm_context *ctx, bool single, void *a, size_t n,
                         void *w, int *info, bool *used)
{
    *used = false;
    *info = 0;
    double anrm = 0;
    for (size_t c = 0; c < n; c++)
        for (size_t r = c; r < n; r++) {
            double v = single ? fabs((double)((float *)a)[c * n + r])
                              : fabs(((double *)a)[c * n + r]);
            anrm = v > anrm || isnan(v) ? v : anrm;
        }
    if (n < LM_EIGH_SPLIT_MIN ||
        !(single ? unscaled(anrm, FLT_MIN, FLT_EPSILON)
                 : unscaled(anrm, DBL_MIN, DBL_EPSILON)))
        return LM_OK;
    *used = true;
    lapack_int li = 0;
    lm_status st = single ? split_f32(ctx, a, n, w, &li)
                          : split_f64(ctx, a, n, w, &li);
    *info = (int)li;
    return st;
}
