/* Body of lm__gram_eig for one precision, included by gram_eig.c twice:
 * REAL is float or double, GE_NAME the function name, GE_SYRK and
 * GE_SYEVD_WORK the BLAS/LAPACKE routines of that precision, GE_ROUTINE
 * the eigensolver's name for messages. */

static lm_status GE_NAME(lm_context *ctx, const double *a, size_t m,
                         size_t n, double *w, double *q)
{
    char jobz = q ? 'V' : 'N';
    bool wide = m <= n;
    size_t d = wide ? m : n, other = wide ? n : m;
    double need = 1.0 + 6.0 * (double)d + 2.0 * (double)d * (double)d;
    if (!lm__lapack_fits(need) || !lm__lapack_fits((double)other))
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "Gram eigendecomposition of a %zu x %zu "
                                    "matrix exceeds the LAPACK integer limit",
                                    m, n);
    REAL query = 0;
    lapack_int iquery = 0;
    lapack_int info = GE_SYEVD_WORK(LAPACK_COL_MAJOR, jobz, 'L', (lapack_int)d,
                                    NULL, (lapack_int)d, NULL, &query, -1,
                                    &iquery, -1);
    if (info != 0)
        return lm_context_set_error(ctx, LM_ERR_INTERNAL,
                                    "LAPACK syevd workspace query failed "
                                    "(info %d)", (int)info);
    size_t lwork = query < 1 ? 1 : (size_t)query;
    size_t liwork = iquery < 1 ? 1 : (size_t)iquery;
    /* A in this precision, G, its eigenvalues, work and iwork, one block. */
    size_t words = m * n + d * d + d + lwork +
                   (liwork * sizeof(lapack_int) + sizeof(REAL) - 1) /
                       sizeof(REAL);
    REAL *buf = lm_alloc(ctx, words * sizeof(REAL));
    if (!buf)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "eigendecomposition (%s) of a Gram "
                                    "matrix: out of memory for the LAPACK "
                                    "workspace (%zu x %zu)", GE_ROUTINE, m,
                                    n);
    REAL *ar = buf, *g = ar + m * n, *wr = g + d * d, *work = wr + d;
    for (size_t i = 0; i < m * n; i++)
        ar[i] = (REAL)a[i];
    /* Row-major upper triangle = column-major lower triangle: syevd reads
     * it in place, no transposed copy. */
    GE_SYRK(CblasRowMajor, CblasUpper, wide ? CblasNoTrans : CblasTrans,
            (int)d, (int)other, 1, ar, (int)n, 0, g, (int)d);
    info = GE_SYEVD_WORK(LAPACK_COL_MAJOR, jobz, 'L', (lapack_int)d, g,
                         (lapack_int)d, wr, work, (lapack_int)lwork,
                         (lapack_int *)(work + lwork), (lapack_int)liwork);
    if (info == 0) {
        /* Column-major eigenvectors, ascending -> row-major, descending. */
        for (size_t c = 0; c < d; c++) {
            const REAL *col = g + (d - 1 - c) * d;
            w[c] = (double)wr[d - 1 - c];
            for (size_t i = 0; q && i < d; i++)
                q[i * d + c] = (double)col[i];
        }
    }
    lm_free(ctx, buf);
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
