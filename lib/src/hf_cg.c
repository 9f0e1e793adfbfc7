/* SPDX-License-Identifier: MIT */
/*
 * HF's inner solver: preconditioned CG (thesis Algorithm 2) on the damped
 * quadratic q(x) = ½ xᵀA x − bᵀx, A = G + λD, b = −∇h, one trainer
 * product G·p per iteration:
 *   α = rᵀy / pᵀAp,  x ← x + αp,  r ← r + αAp,  y = P⁻¹r,
 *   β = r'ᵀy' / rᵀy,  p ← −y + βp.
 * y is never stored: rᵀy and p are formed from r and the diagonal P⁻¹.
 * q(x) = ½ (r − b)ᵀx at x_0 (the thesis' formula), then by the identity
 * q(x + αp) = q(x) + α pᵀr + ½α² pᵀAp with r = Ax − b, which assumes no
 * conjugacy and costs no pass: pᵀr comes with the pass that forms p.
 * Each iteration is three streaming passes (pᵀAp; x and r; the new p),
 * every sum in LANES fixed partial sums so the kernels vectorize and give
 * the same bits on every machine.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "hf_int.h"

#define LANES 8

/* A step α·p beyond this is treated like negative curvature: CG stops
 * rather than let x or r overflow. */
#define HF_STEP_LIMIT 1e300

#if defined(__GNUC__)
#define HF_INLINE static inline __attribute__((always_inline))
#else
#define HF_INLINE static inline
#endif

/* The per-iteration passes ask for each vector's data 4 KiB (512
 * doubles) ahead: the hardware prefetchers stop at page boundaries,
 * which passes over three to five vectors cross all the time, and a
 * single core then waits on DRAM (measured, tests/bench/README.md). A
 * hint only: results are the same with or without it. */
#define AHEAD 512
#if defined(__GNUC__)
#define PREFETCH(v, i, n)                                                                          \
    do {                                                                                           \
        if ((i) + AHEAD < (n))                                                                     \
            __builtin_prefetch((v) + (i) + AHEAD, 0, 3);                                           \
    } while (0)
#else
#define PREFETCH(v, i, n) ((void)0)
#endif

static double lane_sum(const double *s)
{
    double t = 0;
    for (size_t j = 0; j < LANES; j++)
        t += s[j];
    return t;
}

static double lane_max(const double *m)
{
    double t = 0;
    for (size_t j = 0; j < LANES; j++)
        t = m[j] > t ? m[j] : t;
    return t;
}

/* (A v)_i = (G v)_i + λ D_ii v_i; @diag is a constant after inlining, so
 * each caller gets a Tikhonov loop and a scale-sensitive loop. */
HF_INLINE double damped(const double *gv, const double *dvec, double lam, const double *v, size_t i,
                        int diag)
{
    return gv[i] + lam * (diag ? dvec[i] : 1.0) * v[i];
}

/* out = {pᵀAp, max |Ap|}. */
HF_INLINE void curvature_body(size_t n, const double *restrict p, const double *restrict gp,
                              const double *restrict dvec, double lam, int diag, double out[2])
{
    double s[LANES] = {0}, m[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        PREFETCH(p, i, n);
        PREFETCH(gp, i, n);
        if (diag)
            PREFETCH(dvec, i, n);
        for (size_t j = 0; j < LANES; j++) {
            double a = damped(gp, dvec, lam, p, i + j, diag), aa = fabs(a);
            s[j] += p[i + j] * a;
            m[j] = aa > m[j] ? aa : m[j];
        }
    }
    for (; i < n; i++) {
        double a = damped(gp, dvec, lam, p, i, diag), aa = fabs(a);
        s[0] += p[i] * a;
        m[0] = aa > m[0] ? aa : m[0];
    }
    out[0] = lane_sum(s);
    out[1] = lane_max(m);
}

CURV__VECTOR_CLONES static void curvature_kernel(size_t n, const double *restrict p,
                                                 const double *restrict gp,
                                                 const double *restrict dvec, double lam,
                                                 double out[2])
{
    if (dvec)
        curvature_body(n, p, gp, dvec, lam, 1, out);
    else
        curvature_body(n, p, gp, dvec, lam, 0, out);
}

/* x ← x + αp, r ← r + αAp, and a copy of the new x into @snap when
 * @keep (a stored iterate, without reading x again); returns the new
 * rᵀP⁻¹r. */
HF_INLINE double update_body(size_t n, double alpha, const double *restrict p,
                             const double *restrict gp, const double *restrict dvec, double lam,
                             const double *restrict pinv, double *restrict x, double *restrict r,
                             double *restrict snap, int diag, int keep)
{
    double ry[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        PREFETCH(p, i, n);
        PREFETCH(gp, i, n);
        if (diag)
            PREFETCH(dvec, i, n);
        PREFETCH(pinv, i, n);
        PREFETCH(x, i, n);
        PREFETCH(r, i, n);
        for (size_t j = 0; j < LANES; j++) {
            size_t k = i + j;
            x[k] += alpha * p[k];
            if (keep)
                snap[k] = x[k];
            r[k] += alpha * damped(gp, dvec, lam, p, k, diag);
            ry[j] += r[k] * r[k] * pinv[k];
        }
    }
    for (; i < n; i++) {
        x[i] += alpha * p[i];
        if (keep)
            snap[i] = x[i];
        r[i] += alpha * damped(gp, dvec, lam, p, i, diag);
        ry[0] += r[i] * r[i] * pinv[i];
    }
    return lane_sum(ry);
}

/* @snap NULL: no copy. */
CURV__VECTOR_CLONES static double update_kernel(size_t n, double alpha, const double *restrict p,
                                                const double *restrict gp,
                                                const double *restrict dvec, double lam,
                                                const double *restrict pinv, double *restrict x,
                                                double *restrict r, double *restrict snap)
{
    if (dvec && snap)
        return update_body(n, alpha, p, gp, dvec, lam, pinv, x, r, snap, 1, 1);
    if (dvec)
        return update_body(n, alpha, p, gp, dvec, lam, pinv, x, r, snap, 1, 0);
    if (snap)
        return update_body(n, alpha, p, gp, dvec, lam, pinv, x, r, snap, 0, 1);
    return update_body(n, alpha, p, gp, dvec, lam, pinv, x, r, snap, 0, 0);
}

/* p ← −P⁻¹r + βp; out = {max |p|, pᵀr} with the new p. */
CURV__VECTOR_CLONES static void direction_kernel(size_t n, double beta, const double *restrict pinv,
                                                 const double *restrict r, double *restrict p,
                                                 double out[2])
{
    double m[LANES] = {0}, pr[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        PREFETCH(pinv, i, n);
        PREFETCH(r, i, n);
        PREFETCH(p, i, n);
        for (size_t j = 0; j < LANES; j++) {
            size_t k = i + j;
            p[k] = -pinv[k] * r[k] + beta * p[k];
            double a = fabs(p[k]);
            m[j] = a > m[j] ? a : m[j];
            pr[j] += p[k] * r[k];
        }
    }
    for (; i < n; i++) {
        p[i] = -pinv[i] * r[i] + beta * p[i];
        double a = fabs(p[i]);
        m[0] = a > m[0] ? a : m[0];
        pr[0] += p[i] * r[i];
    }
    out[0] = lane_max(m);
    out[1] = lane_sum(pr);
}

/* r = G x + λ D x + g = A x − b; out = {rᵀP⁻¹r, (r + g)ᵀx}. */
HF_INLINE void residual_body(size_t n, const double *restrict gx, const double *restrict dvec,
                             double lam, const double *restrict x, const double *restrict g,
                             const double *restrict pinv, double *restrict r, int diag,
                             double out[2])
{
    double ry[LANES] = {0}, xr[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t j = 0; j < LANES; j++) {
            size_t k = i + j;
            r[k] = damped(gx, dvec, lam, x, k, diag) + g[k];
            ry[j] += r[k] * r[k] * pinv[k];
            xr[j] += (r[k] + g[k]) * x[k];
        }
    for (; i < n; i++) {
        r[i] = damped(gx, dvec, lam, x, i, diag) + g[i];
        ry[0] += r[i] * r[i] * pinv[i];
        xr[0] += (r[i] + g[i]) * x[i];
    }
    out[0] = lane_sum(ry);
    out[1] = lane_sum(xr);
}

CURV__VECTOR_CLONES static void residual_kernel(size_t n, const double *restrict gx,
                                                const double *restrict dvec, double lam,
                                                const double *restrict x, const double *restrict g,
                                                const double *restrict pinv, double *restrict r,
                                                double out[2])
{
    if (dvec)
        residual_body(n, gx, dvec, lam, x, g, pinv, r, 1, out);
    else
        residual_body(n, gx, dvec, lam, x, g, pinv, r, 0, out);
}

double curv__hf_wnorm2(const double *dvec, const double *a, size_t n)
{
    if (!dvec)
        return curv__dot(a, a, n);
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += dvec[i] * a[i] * a[i];
    return s;
}

/* b^e for the exponents the thesis uses, without pow() where a root does. */
static double power(double b, double e)
{
    if (e == 1.0)
        return b;
    if (e == 0.5)
        return sqrt(b);
    if (e == 0.75) {
        double s = sqrt(b);
        return s * sqrt(s);
    }
    return e == 0.0 ? 1.0 : pow(b, e);
}

/*
 * D = diag((F̄ + κ_D)^ξ_D) for scale-sensitive damping (§4.6.3: between the
 * Levenberg-Marquardt diag(B), ξ_D = 1, and a multiple of I), and
 * P = (diag(F̄) + λD + κ)^ξ (§4.9.2, with d = diag(B) + λD: the damping
 * term exact, the curvature diagonal estimated by the empirical Fisher,
 * §4.9.3). The base is floored at 1e-12 of its mean so that P⁻¹ stays
 * finite where F̄, λ and κ all vanish (a guard not in the thesis).
 */
void curv__hf_prepare(const struct hf_hyper *h, struct hf_work *w, size_t d, const double *grad_sq)
{
    if (w->dvec)
        for (size_t i = 0; i < d; i++)
            w->dvec[i] = power(grad_sq[i] + h->damping_kappa, h->damping_xi);
    double *pinv = w->pinv, sum = 0;
    if (h->precond == HF_PRECOND_NONE) {
        for (size_t i = 0; i < d; i++)
            pinv[i] = 1.0;
        return;
    }
    for (size_t i = 0; i < d; i++) {
        pinv[i] = grad_sq[i] + w->lambda * (w->dvec ? w->dvec[i] : 1.0) + h->precond_kappa;
        sum += pinv[i];
    }
    double floor = sum > 0 ? 1e-12 * (sum / (double)d) : 1.0;
    for (size_t i = 0; i < d; i++)
        pinv[i] = 1.0 / power(pinv[i] > floor ? pinv[i] : floor, h->precond_xi);
}

static size_t schedule_point(double nu, size_t e)
{
    double v = pow(nu, (double)e);
    return v >= (double)SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)llround(v);
}

/* Advance to the first point of the schedule (powers of ν, rounded,
 * §4.6.7) after iteration @i. */
static void schedule_next(struct hf_work *w, double nu, size_t i)
{
    while (schedule_point(nu, w->store_exp) <= i)
        w->store_exp++;
    w->next_store = schedule_point(nu, w->store_exp);
}

size_t curv__hf_schedule_slots(double nu, size_t max_iters)
{
    struct hf_work w = {0};
    size_t n = 0;
    for (schedule_next(&w, nu, 0); w.next_store <= max_iters; schedule_next(&w, nu, w.next_store))
        n++;
    return n + 1; /* and the final iterate */
}

void curv__hf_start_from(const struct hf_hyper *h, struct hf_work *w, size_t d, const double *gx)
{
    double s[2];
    residual_kernel(d, gx, w->dvec, w->lambda, w->x, w->g, w->pinv, w->r, s);
    w->ry = s[0];
    w->q[0] = 0.5 * s[1];
    /* p_0 = −M⁻¹r_0: the kernel reads p (β·p with β = 0), and a cancelled
     * step may have left an infinity there (0·∞ is NaN). */
    memset(w->p, 0, d * sizeof *w->p);
    direction_kernel(d, 0.0, w->pinv, w->r, w->p, s);
    w->pmax = s[0];
    w->pr = s[1];
    w->iters = 0;
    w->n_snap = 0;
    w->store_exp = 0;
    schedule_next(w, h->backtrack_nu, 0);
    w->stop = HF_STOP_CONVERGED; /* overwritten when CG iterates */
}

void curv__hf_start_zero(const struct hf_hyper *h, struct hf_work *w, size_t d)
{
    memset(w->x, 0, d * sizeof *w->x);
    curv__hf_start_from(h, w, d, w->x); /* G·0 = 0 */
}

/* Thesis eq. 4.2: s_j = (q_j − q_{j−k}) / q_j < ε with k = max(10, j/10),
 * applied only when j > k and q_j < 0 (ALGORITHMS.md 4.4: a warm start can
 * make q positive early, §4.8, which would flip the sign of s_j). */
static int progress_stop(const struct hf_hyper *h, const struct hf_work *w)
{
    size_t j = w->iters, k = (size_t)(h->cg_window_frac * (double)j);
    if (k < (size_t)h->cg_window)
        k = (size_t)h->cg_window;
    if (j <= k || !(w->q[j] < 0))
        return 0;
    return (w->q[j] - w->q[j - k]) / w->q[j] < h->cg_eps;
}

/* The slot the next stored iterate goes to. */
static double *next_slot(struct hf_work *w, size_t d)
{
    return w->snap + w->n_snap * d;
}

static void store(struct hf_work *w, size_t d, size_t it)
{
    memcpy(next_slot(w, d), w->x, d * sizeof *w->x);
    w->snap_it[w->n_snap++] = it;
}

void curv__hf_curvature(const struct hf_work *w, size_t d, const double *gp, double c[2])
{
    curvature_kernel(d, w->p, gp, w->dvec, w->lambda, c);
}

int curv__hf_iterate(const struct hf_hyper *h, struct hf_work *w, size_t d, const double *gp,
                     const double c[2])
{
    double s[2];
    double alpha = w->ry / c[0];
    /* Non-positive curvature (possible only when the trainer's G is not
     * PSD or λ = 0), pᵀAp overflowing, or a step that would overflow:
     * keep x_i (the guard of ALGORITHMS.md 4.4; Algorithm 2 assumes A
     * positive definite). */
    if (!(c[0] > 0) || !isfinite(c[0]) || !isfinite(alpha) || alpha * w->pmax > HF_STEP_LIMIT ||
        alpha * c[1] > HF_STEP_LIMIT) {
        w->stop = HF_STOP_CURVATURE;
        return 1;
    }
    size_t i = ++w->iters;
    const int keep = h->backtrack && i == w->next_store;
    double ry = update_kernel(d, alpha, w->p, gp, w->dvec, w->lambda, w->pinv, w->x, w->r,
                              keep ? next_slot(w, d) : NULL);
    w->q[i] = w->q[i - 1] + alpha * w->pr + 0.5 * alpha * alpha * c[0];
    if (keep) {
        w->snap_it[w->n_snap++] = i;
        schedule_next(w, h->backtrack_nu, i);
    }
    if (!(ry > 0) || !isfinite(ry))
        w->stop = ry == 0 ? HF_STOP_CONVERGED : HF_STOP_CURVATURE;
    else if (i >= (size_t)h->cg_max)
        w->stop = HF_STOP_MAX;
    else if (i >= (size_t)h->cg_min && progress_stop(h, w))
        w->stop = HF_STOP_PROGRESS;
    else {
        double beta = ry / w->ry;
        w->ry = ry;
        direction_kernel(d, beta, w->pinv, w->r, w->p, s);
        w->pmax = s[0];
        w->pr = s[1];
        return 0;
    }
    return 1;
}

void curv__hf_collect(struct hf_work *w, size_t d)
{
    if (w->n_snap == 0 || w->snap_it[w->n_snap - 1] != w->iters)
        store(w, d, w->iters);
    w->bt_end = w->n_snap;
    w->best = SIZE_MAX;
}
