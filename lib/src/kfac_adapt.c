/* SPDX-License-Identifier: MIT */
/*
 * K-FAC's adaptation rules as pure functions (thesis §6.5, §6.6.3-6.6.6,
 * §6.7; safeguards from ALGORITHMS.md §3.6), each tested against brute
 * force in tests/lib/test_kfac_adapt.c.
 */
#include <math.h>

#include "kfac_int.h"

double curv__kfac_eps(uint64_t k, double decay)
{
    double e = k ? 1.0 - 1.0 / (double)k : 0.0;
    return e < decay ? e : decay;
}

double curv__kfac_pi(double trA, size_t nA, double trG, size_t nG)
{
    if (!(trA > 0) || !(trG > 0) || nA == 0 || nG == 0)
        return 1.0;
    double pi = sqrt((trA / (double)nA) / (trG / (double)nG));
    return isfinite(pi) && pi > 0 ? pi : 1.0;
}

double curv__kfac_model(const struct curv__kfac_quad *q, double alpha, double mu)
{
    return 0.5 * (alpha * alpha * q->q11 + 2.0 * alpha * mu * q->q12 + mu * mu * q->q22) +
           alpha * q->g1 + mu * q->g2;
}

/* The unconstrained minimiser: the 2x2 solve, or the 1-D α when there is
 * no momentum or the system is singular. 0 when q11 <= 0 or α is not
 * finite. */
static int solve_free(const struct curv__kfac_quad *q, double *alpha, double *mu)
{
    if (!(q->q11 > 0) || !isfinite(q->q11))
        return 0;
    double a = -q->g1 / q->q11, u = 0;
    if (q->has_mom && q->q22 > 0) {
        double det = q->q11 * q->q22 - q->q12 * q->q12;
        if (det > 1e-12 * q->q11 * q->q22) {
            double a2 = -(q->q22 * q->g1 - q->q12 * q->g2) / det;
            double u2 = -(q->q11 * q->g2 - q->q12 * q->g1) / det;
            if (isfinite(a2) && isfinite(u2))
                a = a2, u = u2;
        }
    }
    if (!isfinite(a))
        return 0;
    *alpha = a, *mu = u;
    return 1;
}

static double clamp(double x, double lo, double hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

/* Keep (a, u) when it beats the best so far. */
static void consider(const struct curv__kfac_quad *q, double a, double u, double *alpha, double *mu,
                     double *m)
{
    double v = curv__kfac_model(q, a, u);
    if (isfinite(v) && v < *m)
        *alpha = a, *mu = u, *m = v;
}

int curv__kfac_solve(const struct curv__kfac_quad *q, const struct curv__kfac_box *box,
                     double *alpha, double *mu, double *m)
{
    *alpha = *mu = *m = 0;
    double a, u;
    if (!solve_free(q, &a, &u))
        return 0;
    if (!box || (a >= 0 && a <= box->alpha_max && u >= 0 && u <= box->mu_max)) {
        *alpha = a, *mu = u;
        *m = curv__kfac_model(q, a, u);
        return 1;
    }
    /* M is convex, so the box's minimum lies on an edge, where it is the
     * clamped 1-D minimiser; M(0, 0) = 0 is the start. */
    const double amax = box->alpha_max, umax = q->has_mom ? box->mu_max : 0;
    const double edges_u[2] = {0, umax}, edges_a[2] = {0, amax};
    for (int i = 0; i < (umax > 0 ? 2 : 1); i++) {
        double ui = edges_u[i];
        consider(q, clamp(-(q->g1 + ui * q->q12) / q->q11, 0, amax), ui, alpha, mu, m);
    }
    for (int i = 0; umax > 0 && q->q22 > 0 && i < 2; i++) {
        double ai = edges_a[i];
        consider(q, ai, clamp(-(q->g2 + ai * q->q12) / q->q22, 0, umax), alpha, mu, m);
    }
    return 1;
}

double curv__kfac_lm(double lambda, double rho, double omega1)
{
    if (rho > 0.75)
        return lambda * omega1;
    if (!(rho >= 0.25)) /* a NaN ρ (the loss was not finite) is no success */
        return lambda / omega1;
    return lambda;
}

void curv__kfac_gammas(double gamma, double omega2, double out[3])
{
    out[0] = gamma;
    out[1] = omega2 * gamma;
    out[2] = gamma / omega2;
}

size_t curv__kfac_gram_check(const double *g, size_t n, const double *damp)
{
    double big = 0;
    for (size_t i = 0; i < n * n; i++)
        big = fabs(g[i]) > big ? fabs(g[i]) : big;
    for (size_t i = 0; i < n; i++) {
        /* A quadratic form near zero comes back slightly negative from a
         * trainer computing in FP32; next to the damping it is nothing. */
        if (g[i * n + i] < -1e-6 * (big + (damp ? damp[i] : 0)))
            return i * n + i;
        for (size_t j = i + 1; j < n; j++) {
            double x = g[i * n + j], y = g[j * n + i];
            double scale = sqrt(fabs(g[i * n + i] * g[j * n + j])) + fabs(x) + fabs(y);
            if (fabs(x - y) > 1e-6 * scale)
                return j * n + i;
        }
    }
    return n * n;
}
