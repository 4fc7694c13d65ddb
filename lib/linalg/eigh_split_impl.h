/* Body of one precision of eigh_split.c, included twice: REAL is float or
 * double, ES_NAME the function, ES_L(x) the LAPACKE routine x and ES_B(x)
 * the CBLAS routine x in that precision, ES_LOCAL(x) a file-local name. */

/* sytrd('L')'s Q = H(1) ... H(n-1) as compact-WY blocks of REFLECTORS:
 * block b is I - V_b T_b V_b^T acting on rows off_b + 1 .. n - 1 (0-based)
 * with V_b (len_b x kb, col-major, unit lower trapezoidal, zeros and ones
 * written out) and T_b (kb x kb, upper triangular, from larft). Built
 * once; every column block then reads them. */
struct ES_LOCAL(back_job) {
    size_t n, blocks;
    const REAL *v, *t; /* all V_b, then all T_b (REFLECTORS^2 each) */
    REAL *z;           /* the tridiagonal's eigenvectors, overwritten */
    lm_context *ctx;
};

static size_t ES_LOCAL(v_offset)(size_t n, size_t b)
{
    /* sum over earlier blocks c of len_c * REFLECTORS, len_c = n-1-c R */
    size_t off = 0;
    for (size_t c = 0; c < b; c++)
        off += (n - 1 - c * REFLECTORS) * REFLECTORS;
    return off;
}

/* Columns [c0, c1) of Z <- Q Z, the last block of reflectors first. */
static lm_status ES_LOCAL(back_block)(void *arg, size_t i)
{
    const struct ES_LOCAL(back_job) *j = arg;
    size_t n = j->n, c0 = i * SPLIT_COLS;
    size_t c1 = c0 + SPLIT_COLS < n ? c0 + SPLIT_COLS : n;
    int cols = (int)(c1 - c0);
    REAL *w = lm_alloc(j->ctx, REFLECTORS * (c1 - c0) * sizeof(REAL));
    if (!w)
        return LM_ERR_OUT_OF_MEMORY;
    const REAL *tb = j->t;
    for (size_t b = j->blocks; b-- > 0;) {
        size_t off = b * REFLECTORS, len = n - 1 - off;
        size_t kb = n - 1 - off < REFLECTORS ? n - 1 - off : REFLECTORS;
        const REAL *vb = j->v + ES_LOCAL(v_offset)(n, b);
        const REAL *t = tb + b * REFLECTORS * REFLECTORS;
        REAL *c = j->z + c0 * n + off + 1;
        /* W = V^T C; W = T W; C -= V W. */
        ES_B(gemm)(CblasColMajor, CblasTrans, CblasNoTrans, (int)kb, cols,
                   (int)len, 1, vb, (int)len, c, (int)n, 0, w,
                   (int)REFLECTORS);
        ES_B(trmm)(CblasColMajor, CblasLeft, CblasUpper, CblasNoTrans,
                   CblasNonUnit, (int)kb, cols, 1, t, (int)REFLECTORS, w,
                   (int)REFLECTORS);
        ES_B(gemm)(CblasColMajor, CblasNoTrans, CblasNoTrans, (int)len, cols,
                   (int)kb, -1, vb, (int)len, w, (int)REFLECTORS, 1, c,
                   (int)n);
    }
    lm_free(j->ctx, w);
    return LM_OK;
}

/* The compact-WY blocks of sytrd's reflectors (a: col-major, lower, as
 * sytrd left it; tau: n - 1 scalars) into v and t (see back_job). */
static lapack_int ES_LOCAL(wy_blocks)(const REAL *a, const REAL *tau,
                                      size_t n, size_t blocks, REAL *v,
                                      REAL *t)
{
    for (size_t b = 0; b < blocks; b++) {
        size_t off = b * REFLECTORS, len = n - 1 - off;
        size_t kb = len < REFLECTORS ? len : REFLECTORS;
        REAL *vb = v + ES_LOCAL(v_offset)(n, b);
        for (size_t c = 0; c < kb; c++) { /* reflector off + c */
            const REAL *col = a + (off + c) * n + off + 1;
            for (size_t r = 0; r < len; r++)
                vb[c * len + r] = r < c ? 0 : r == c ? 1 : col[r];
        }
        lapack_int info = ES_L(larft_work)(
            LAPACK_COL_MAJOR, 'F', 'C', (lapack_int)len, (lapack_int)kb, vb,
            (lapack_int)len, tau + off, t + b * REFLECTORS * REFLECTORS,
            (lapack_int)REFLECTORS);
        if (info)
            return info;
    }
    return 0;
}

/* syevd('V', 'L') on a (n x n col-major, lower triangle), vectors into a,
 * eigenvalues ascending into w; *info as syevd's (or larft's). */
static lm_status ES_NAME(lm_context *ctx, REAL *a, size_t n, REAL *w,
                         lapack_int *info)
{
    lapack_int ln = (lapack_int)n;
    REAL q1 = 0, q2 = 0;
    lapack_int iq = 0;
    *info = ES_L(sytrd_work)(LAPACK_COL_MAJOR, 'L', ln, NULL, ln, NULL, NULL,
                             NULL, &q1, -1);
    if (*info == 0)
        *info = ES_L(stedc_work)(LAPACK_COL_MAJOR, 'I', ln, NULL, NULL, NULL,
                                 ln, &q2, -1, &iq, -1);
    if (*info != 0)
        return LM_ERR_INTERNAL;
    size_t lwork = (size_t)(q1 > q2 ? q1 : q2), liwork = (size_t)iq;
    lwork = lwork < 1 ? 1 : lwork;
    liwork = liwork < 1 ? 1 : liwork;
    size_t blocks = (n - 1 + REFLECTORS - 1) / REFLECTORS;
    size_t vwords = ES_LOCAL(v_offset)(n, blocks);
    /* e, tau, V, T, work, iwork in one block; Z is written into a once
     * the reflectors are copied out of it into V. */
    size_t words = 2 * n + vwords + blocks * REFLECTORS * REFLECTORS +
                   lwork +
                   (liwork * sizeof(lapack_int) + sizeof(REAL) - 1) /
                       sizeof(REAL);
    REAL *buf = lm__workspace_alloc(ctx, words * sizeof(REAL));
    if (!buf)
        return LM_ERR_OUT_OF_MEMORY;
    REAL *e = buf, *tau = e + n, *v = tau + n,
         *t = v + vwords, *work = t + blocks * REFLECTORS * REFLECTORS;
    lapack_int *iwork = (lapack_int *)(work + lwork);
    *info = ES_L(sytrd_work)(LAPACK_COL_MAJOR, 'L', ln, a, ln, w, e, tau,
                             work, (lapack_int)lwork);
    /* (trmm reads only T's upper triangle: larft's lower part may stay.) */
    if (*info == 0)
        *info = ES_LOCAL(wy_blocks)(a, tau, n, blocks, v, t);
    if (*info == 0)
        *info = ES_L(stedc_work)(LAPACK_COL_MAJOR, 'I', ln, w, e, a, ln,
                                 work, (lapack_int)lwork, iwork,
                                 (lapack_int)liwork);
    lm_status st = LM_OK;
    if (*info == 0) {
        struct ES_LOCAL(back_job) j = {n, blocks, v, t, a, ctx};
        st = lm__parallel_for(ctx, (n + SPLIT_COLS - 1) / SPLIT_COLS,
                              ES_LOCAL(back_block), &j);
    }
    lm__workspace_free(ctx, buf);
    return st;
}
