/* Body of lm__gram_eig for one precision, included by svd_top.c twice:
 * REAL is float or double (GE_SINGLE true or false), GE_NAME the function
 * name, GE_NAME_SYEVD a name for its plain syevd call, GE_DECOMPOSE one
 * for the decomposition of a formed G, GE_GRAM (blocked.c)
 * and GE_SYEVD_WORK the Gram product and the LAPACKE routine of that
 * precision, GE_ROUTINE the eigensolver's name for messages; syevd_fits
 * is svd_top.c's. */

/* syevd on g (d x d, col-major lower) with its workspace from ctx. */
static lm_status GE_NAME_SYEVD(lm_context *ctx, char jobz, REAL *g, size_t d,
                               REAL *wr, lapack_int *info)
{
    REAL query = 0;
    lapack_int iquery = 0;
    *info = GE_SYEVD_WORK(LAPACK_COL_MAJOR, jobz, 'L', (lapack_int)d, NULL,
                          (lapack_int)d, NULL, &query, -1, &iquery, -1);
    if (*info != 0)
        return lm_context_set_error(ctx, LM_ERR_INTERNAL,
                                    "LAPACK syevd workspace query failed "
                                    "(info %d)", (int)*info);
    size_t lwork = query < 1 ? 1 : (size_t)query;
    size_t liwork = iquery < 1 ? 1 : (size_t)iquery;
    REAL *work = lm__workspace_alloc(ctx, (lwork + (liwork * sizeof(lapack_int) +
                                         sizeof(REAL) - 1) / sizeof(REAL)) *
                                   sizeof(REAL));
    if (!work)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "eigendecomposition (%s) of a %zu x %zu "
                                    "Gram matrix: out of memory for the "
                                    "LAPACK workspace", GE_ROUTINE, d, d);
    *info = GE_SYEVD_WORK(LAPACK_COL_MAJOR, jobz, 'L', (lapack_int)d, g,
                          (lapack_int)d, wr, work, (lapack_int)lwork,
                          (lapack_int *)(work + lwork), (lapack_int)liwork);
    lm__workspace_free(ctx, work);
    return LM_OK;
}

/* Eigenpairs of a formed G (d x d, row-major upper = col-major lower,
 * overwritten) into w (descending) and q (row-major, NULL: values only);
 * wr is d scratch values. */
static lm_status GE_DECOMPOSE(lm_context *ctx, REAL *g, size_t d, REAL *wr,
                              double *w, double *q)
{
    char jobz = q ? 'V' : 'N';
    lapack_int info = 0;
    bool split = false;
    lm_status st = LM_OK;
    if (q) { /* vectors: back-transformation on idle threads */
        int split_info = 0;
        st = lm__eigh_split(ctx, GE_SINGLE, g, d, wr, &split_info, &split);
        info = split_info;
    }
    if (st == LM_OK && !split)
        st = GE_NAME_SYEVD(ctx, jobz, g, d, wr, &info);
    if (st != LM_OK)
        return st;
    if (info == 0) {
        /* Column-major eigenvectors, ascending -> row-major, descending. */
        for (size_t c = 0; c < d; c++) {
            const REAL *col = g + (d - 1 - c) * d;
            w[c] = (double)wr[d - 1 - c];
            for (size_t i = 0; q && i < d; i++)
                q[i * d + c] = (double)col[i];
        }
    }
    /* No convergence: LM_ERR_LINALG without a message, since every caller
     * falls back to another route (the context's error is shared by all
     * threads, so a message set and then cleared could erase another
     * tensor's). */
    if (info > 0)
        return LM_ERR_LINALG;
    if (info < 0)
        return lm_context_set_error(ctx, LM_ERR_INTERNAL,
                                    "LAPACK %s: illegal argument %d on a "
                                    "%zu x %zu Gram matrix", GE_ROUTINE,
                                    (int)-info, d, d);
    return LM_OK;
}

static lm_status GE_NAME(lm_context *ctx, const double *a, size_t m,
                         size_t n, double *w, double *q)
{
    bool wide = m <= n;
    size_t d = wide ? m : n, other = wide ? n : m;
    if (!syevd_fits(d) || !lm__lapack_fits((double)other))
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "Gram eigendecomposition of a %zu x %zu "
                                    "matrix exceeds the LAPACK integer limit",
                                    m, n);
    /* A in this precision (f32 only: f64 reads A itself), G and its
     * eigenvalues, one block; syevd's workspace apart, only when syevd
     * runs (fresh pages cost page faults). */
    size_t copy = GE_SINGLE ? m * n : 0;
    REAL *buf = lm__workspace_alloc(ctx, (copy + d * d + d) * sizeof(REAL));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "eigendecomposition (%s) of a Gram "
                                    "matrix: out of memory (%zu x %zu)",
                                    GE_ROUTINE, m, n);
    REAL *g = buf + copy, *wr = g + d * d;
    const REAL *ar = (const REAL *)(const void *)a;
    if (GE_SINGLE) {
        for (size_t i = 0; i < m * n; i++)
            buf[i] = (REAL)a[i];
        ar = buf;
    }
    /* Row-major upper triangle = column-major lower triangle: syevd reads
     * it in place, no transposed copy. */
    lm_status st = GE_GRAM(ctx, ar, m, n, g);
    if (st == LM_OK)
        st = GE_DECOMPOSE(ctx, g, d, wr, w, q);
    lm__workspace_free(ctx, buf);
    return st;
}
