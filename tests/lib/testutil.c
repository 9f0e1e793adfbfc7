/* SPDX-License-Identifier: MIT */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tu_rng_seed(tu_rng *r, uint64_t seed)
{
    r->s = seed;
}

static uint64_t next_u64(tu_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double tu_uniform(tu_rng *r)
{
    return (double)(next_u64(r) >> 11) * 0x1.0p-53;
}

double tu_normal(tu_rng *r)
{
    double u = tu_uniform(r), v = tu_uniform(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

void tu_fill_normal(tu_rng *r, double *x, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * tu_normal(r);
}

double *tu_alloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    assert_non_null(p);
    return p;
}

void tu_matmul(size_t m, size_t k, size_t n, const double *A, const double *B, double *C)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t p = 0; p < k; p++)
                s += A[i * k + p] * B[p * n + j];
            C[i * n + j] = s;
        }
}

void tu_rand_spd(tu_rng *r, size_t n, double min_eig, double *A)
{
    double *G = tu_alloc(n * n);
    tu_fill_normal(r, G, n * n, 1.0);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t p = 0; p < n; p++)
                s += G[i * n + p] * G[j * n + p];
            A[i * n + j] = s / (double)n + (i == j ? min_eig : 0.0);
        }
    free(G);
}

/* Cyclic Jacobi: A = V diag(w) V^T. Slow but simple and independent. */
static void jacobi_eig(size_t n, double *A, double *V, double *w)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            V[i * n + j] = i == j;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, tot = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) {
                tot += A[i * n + j] * A[i * n + j];
                if (i != j)
                    off += A[i * n + j] * A[i * n + j];
            }
        if (off <= 1e-30 * tot)
            break;
        for (size_t p = 0; p < n; p++)
            for (size_t q = p + 1; q < n; q++) {
                double apq = A[p * n + q];
                if (fabs(apq) < 1e-300)
                    continue;
                double theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (size_t k = 0; k < n; k++) {
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq;
                    A[k * n + q] = s * akp + c * akq;
                }
                for (size_t k = 0; k < n; k++) {
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk;
                    A[q * n + k] = s * apk + c * aqk;
                }
                for (size_t k = 0; k < n; k++) {
                    double vkp = V[k * n + p], vkq = V[k * n + q];
                    V[k * n + p] = c * vkp - s * vkq;
                    V[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (size_t i = 0; i < n; i++)
        w[i] = A[i * n + i];
}

/* out = R max(w, floor)^p R^T; returns the smallest eigenvalue before the floor. */
static double sym_pow_floor(size_t n, const double *A, double p, double floor, double floor_rel,
                            double *out)
{
    double *W = tu_alloc(n * n), *V = tu_alloc(n * n), *w = tu_alloc(n);
    memcpy(W, A, n * n * sizeof(double));
    jacobi_eig(n, W, V, w);
    double wmax = w[0], wmin = w[0];
    for (size_t i = 1; i < n; i++)
        wmax = fmax(wmax, w[i]), wmin = fmin(wmin, w[i]);
    floor = fmax(floor, floor_rel * wmax);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t k = 0; k < n; k++)
                s += V[i * n + k] * pow(w[k] > floor ? w[k] : floor, p) * V[j * n + k];
            out[i * n + j] = s;
        }
    free(W);
    free(V);
    free(w);
    return wmin;
}

void tu_sym_pow(size_t n, const double *A, double p, double floor, double *out)
{
    sym_pow_floor(n, A, p, floor, 0.0, out);
}

double tu_sym_pow_rel(size_t n, const double *A, double p, double floor_rel, double *out)
{
    return sym_pow_floor(n, A, p, -INFINITY, floor_rel, out);
}

double tu_rel_err(const double *a, const double *b, size_t n)
{
    double num = 0, den = 1e-300;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs(a[i] - b[i]));
        den = fmax(den, fabs(b[i]));
    }
    return num / den;
}

unsigned char *tu_snapshot(const curv_opt *o, size_t *len)
{
    unsigned char *blob = NULL;
    curv_error err;
    assert_int_equal(curv_opt_save(o, &blob, len, &err), CURV_OK);
    return blob;
}

void tu_assert_unchanged(const curv_opt *o, const unsigned char *snap, size_t len)
{
    size_t n2;
    unsigned char *now = tu_snapshot(o, &n2);
    assert_int_equal(n2, len);
    assert_memory_equal(now, snap, len);
    curv_free(now);
}
