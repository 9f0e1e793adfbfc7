/* SPDX-License-Identifier: MIT */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
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

uint64_t tu_u64(tu_rng *r)
{
    return next_u64(r);
}

int tu_same_bits(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0;
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

void tu_sym_eig(size_t n, const double *A, double *Q, double *w)
{
    double *W = tu_alloc(n * n);
    memcpy(W, A, n * n * sizeof(double));
    jacobi_eig(n, W, Q, w);
    free(W);
}

void tu_from_eig(size_t n, const double *Q, const double *f, double *out)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t k = 0; k < n; k++)
                s += Q[i * n + k] * f[k] * Q[j * n + k];
            out[i * n + j] = s;
        }
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
    for (size_t k = 0; k < n; k++)
        w[k] = pow(w[k] > floor ? w[k] : floor, p);
    tu_from_eig(n, V, w, out);
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

void tu_expect_close(const double *got, const double *want, size_t n, double tol, const char *what,
                     int t)
{
    double e = tu_rel_err(got, want, n);
    if (e > tol)
        fail_msg("%s, step %d: relative error %g > %g", what, t, e, tol);
}

curv_layout *tu_mixed_layout(const tu_mixed_spec *s)
{
    curv_layout *l = curv_layout_new();
    assert_non_null(l);
    assert_int_equal(
        curv_layout_add_dense(l, s->dense.name, s->dense.n_out, s->dense.n_in, 1, NULL), CURV_OK);
    if (s->conv.name)
        assert_int_equal(curv_layout_add_conv2d(l, s->conv.name, s->conv.c_out, s->conv.c_in,
                                                s->conv.kh, s->conv.kw, 1, NULL),
                         CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, s->vector.name, s->vector.n, NULL), CURV_OK);
    if (s->dim)
        assert_int_equal(curv_layout_dim(l), s->dim);
    return l;
}

curv_layout *tu_opt_mixed_layout(void)
{
    static const tu_mixed_spec spec = {{"fc", 3, 4}, {"conv", 2, 2, 2, 2}, {"gain", 4}, TU_D_MIXED};
    return tu_mixed_layout(&spec);
}

void tu_config_set(curv_config *c, const char *key, double num, const char *str)
{
    curv_error err;
    if (str)
        tu_assert_status(curv_config_set_str(c, key, str, &err), CURV_OK, &err);
    else
        tu_assert_status(curv_config_set_num(c, key, num, &err), CURV_OK, &err);
}

curv_config *tu_config(const tu_kv *kv, size_t n)
{
    curv_config *c = curv_config_new();
    assert_non_null(c);
    for (size_t i = 0; i < n; i++)
        tu_config_set(c, kv[i].key, kv[i].num, NULL);
    return c;
}

curv_opt *tu_new_opt(curv_opt_kind kind, const curv_layout *l, const curv_config *c)
{
    curv_opt *o = NULL;
    curv_error err;
    tu_assert_status(curv_opt_new(kind, l, c, &o, &err), CURV_OK, &err);
    assert_non_null(o);
    return o;
}

curv_opt *tu_opt_with(curv_opt_kind kind, const curv_layout *l, const tu_kv *kv, size_t n)
{
    curv_config *c = tu_config(kv, n);
    curv_opt *o = tu_new_opt(kind, l, c);
    curv_config_free(c);
    return o;
}

int tu_has_param(curv_opt_kind kind, const char *name)
{
    curv_param_info p;
    for (size_t i = 0; curv_opt_param_info(kind, i, &p) == CURV_OK; i++)
        if (strcmp(p.name, name) == 0)
            return 1;
    return 0;
}

curv_status tu_step(curv_opt *o, const double *g, const double *theta, double *upd, curv_error *err)
{
    curv_step_input in = {
        .grad = g, .params = theta, .len = curv_layout_dim(curv_opt_layout(o)), .dtype = CURV_F64};
    return curv_opt_step(o, &in, upd, NULL, err);
}

void tu_step_ok(curv_opt *o, const double *g, const double *theta, double *upd)
{
    curv_error err;
    tu_assert_status(tu_step(o, g, theta, upd, &err), CURV_OK, &err);
}

int tu_plain_kind(int kind)
{
    unsigned in = curv_opt_kind_inputs((curv_opt_kind)kind);
    return curv_opt_kind_name((curv_opt_kind)kind) &&
           !(in & (CURV_INPUT_REQUESTS | CURV_INPUT_LAYERS));
}

curv_opt *tu_kfac_opt(const curv_layout *l, const tu_kv *kv, size_t n, ...)
{
    curv_config *c = tu_config(kv, n);
    tu_config_set(c, "precision", 0, "fp64");
    va_list ap;
    va_start(ap, n);
    for (const char *key; (key = va_arg(ap, const char *)) != NULL;) {
        const char *str = va_arg(ap, const char *);
        if (str)
            tu_config_set(c, key, 0, str);
    }
    va_end(ap);
    curv_opt *o = tu_new_opt(CURV_OPT_KFAC, l, c);
    curv_config_free(c);
    return o;
}

void tu_gj_solve(size_t n, const double *M, const double *b, double *x)
{
    double *T = tu_alloc(n * (n + 1));
    for (size_t i = 0; i < n; i++) {
        memcpy(T + i * (n + 1), M + i * n, n * sizeof(double));
        T[i * (n + 1) + n] = b[i];
    }
    for (size_t c = 0; c < n; c++) {
        size_t p = c;
        for (size_t r = c + 1; r < n; r++)
            if (fabs(T[r * (n + 1) + c]) > fabs(T[p * (n + 1) + c]))
                p = r;
        for (size_t k = 0; k <= n; k++) {
            double t = T[c * (n + 1) + k];
            T[c * (n + 1) + k] = T[p * (n + 1) + k];
            T[p * (n + 1) + k] = t;
        }
        for (size_t r = 0; r < n; r++) {
            if (r == c)
                continue;
            double f = T[r * (n + 1) + c] / T[c * (n + 1) + c];
            for (size_t k = c; k <= n; k++)
                T[r * (n + 1) + k] -= f * T[c * (n + 1) + k];
        }
    }
    for (size_t i = 0; i < n; i++)
        x[i] = T[i * (n + 1) + n] / T[i * (n + 1) + i];
    free(T);
}

void tu_gj_inverse(size_t n, const double *M, double *out)
{
    double *W = tu_alloc(n * 2 * n);
    for (size_t i = 0; i < n; i++) {
        memcpy(W + i * 2 * n, M + i * n, n * sizeof(double));
        W[i * 2 * n + n + i] = 1.0;
    }
    for (size_t col = 0; col < n; col++) {
        size_t piv = col;
        for (size_t r = col + 1; r < n; r++)
            if (fabs(W[r * 2 * n + col]) > fabs(W[piv * 2 * n + col]))
                piv = r;
        assert_true(W[piv * 2 * n + col] != 0.0);
        for (size_t k = 0; k < 2 * n; k++) {
            double tmp = W[col * 2 * n + k];
            W[col * 2 * n + k] = W[piv * 2 * n + k];
            W[piv * 2 * n + k] = tmp;
        }
        double p = W[col * 2 * n + col];
        for (size_t k = 0; k < 2 * n; k++)
            W[col * 2 * n + k] /= p;
        for (size_t r = 0; r < n; r++) {
            double f = W[r * 2 * n + col];
            if (r == col || f == 0.0)
                continue;
            for (size_t k = 0; k < 2 * n; k++)
                W[r * 2 * n + k] -= f * W[col * 2 * n + k];
        }
    }
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * n, W + i * 2 * n + n, n * sizeof(double));
    free(W);
}

double tu_report(const curv_opt *o, const char *name)
{
    const curv_report_entry *e;
    size_t n = curv_opt_report(o, &e);
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, name) == 0)
            return e[i].value;
    fail_msg("report has no entry '%s'", name);
    return NAN;
}

curv_status tu_drive(curv_opt *o, const curv_step_input *in, tu_answer_fn answer, void *ctx,
                     void *upd, size_t *n_req, curv_error *err)
{
    curv_request req;
    size_t n = 0;
    curv_status st = curv_opt_step(o, in, upd, &req, err);
    while (st == CURV_NEED_INPUT) {
        double *v = calloc(req.n_values ? req.n_values : 1, sizeof *v);
        assert_non_null(v);
        answer(ctx, &req, v);
        curv_response resp = {.seq = req.seq, .n_values = req.n_values, .values = v};
        st = curv_opt_resume(o, &resp, in->dtype, upd, &req, err);
        free(v);
        n++;
    }
    if (n_req)
        *n_req = n;
    return st;
}

double tu_quad_loss(const tu_quad *q, const double *v)
{
    double lin = 0, quad = 0;
    for (size_t i = 0; i < q->d; i++) {
        double gv = 0;
        for (size_t j = 0; j < q->d; j++)
            gv += q->G[i * q->d + j] * v[j];
        lin += q->g[i] * v[i];
        quad += v[i] * gv;
    }
    return q->h0 + lin + 0.5 * quad;
}

void tu_quad_answer(void *ctx, const curv_request *req, double *values)
{
    const tu_quad *q = ctx;
    const size_t d = q->d, n = req->n_vectors;
    assert_int_equal(req->dim, d);
    if (req->kind == CURV_REQ_LOSS) {
        for (size_t k = 0; k < n; k++)
            values[k] = tu_quad_loss(q, req->vectors + k * d);
        return;
    }
    double *gv = tu_alloc(n * d);
    tu_matmul(n, d, d, req->vectors, q->G, gv); /* rows of V G = (G V^T)^T, G symmetric */
    if (req->kind == CURV_REQ_CURVATURE_PRODUCT)
        memcpy(values, gv, n * d * sizeof *gv);
    else
        for (size_t a = 0; a < n; a++)
            for (size_t b = 0; b < n; b++) {
                double s = 0;
                for (size_t i = 0; i < d; i++)
                    s += gv[a * d + i] * req->vectors[b * d + i];
                values[a * n + b] = s;
            }
    free(gv);
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

void tu_put_le(unsigned char *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

uint64_t tu_get_le(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint32_t tu_crc32(const unsigned char *p, size_t n)
{
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
            table[i] = c;
        }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
    return ~c;
}

void tu_reseal(unsigned char *blob, size_t len)
{
    tu_put_le(blob + len - 4, tu_crc32(blob, len - 4), 4);
}

unsigned char *tu_forge(unsigned char *dst, const unsigned char *src, size_t len, size_t off,
                        uint64_t v, unsigned n)
{
    memcpy(dst, src, len);
    tu_put_le(dst + off, v, n);
    tu_reseal(dst, len);
    return dst;
}

unsigned char *tu_memdup(const void *p, size_t n)
{
    unsigned char *c = malloc(n ? n : 1);
    assert_non_null(c);
    memcpy(c, p, n);
    return c;
}

void tu_assert_error_set(const curv_error *err, curv_status st)
{
    if (st == CURV_OK)
        return;
    assert_int_equal(err->status, st);
    assert_true(strlen(err->text) > 0);
}

/* ---- K-FAC driver ---- */

void tu_mlp_new(tu_mlp *net, const size_t *n, size_t L, size_t nv, size_t m, uint64_t seed)
{
    assert_true(L >= 1 && L <= TU_MLP_MAX);
    memset(net, 0, sizeof *net);
    net->L = L, net->nv = nv, net->m = m;
    for (size_t i = 0; i <= L; i++)
        net->n[i] = n[i];
    for (size_t i = 0; i < L; i++)
        net->dim += n[i + 1] * (n[i] + 1);
    net->dim += nv;
    net->theta = tu_alloc(net->dim);
    net->X = tu_alloc(m * n[0]);
    net->Y = tu_alloc(m * n[L]);
    net->pex = tu_alloc(m * net->dim);
    net->g = tu_alloc(net->dim);
    for (size_t i = 0; i < L; i++) {
        net->acts[i] = tu_alloc(m * n[i]);
        net->sig[i] = tu_alloc(m * n[i + 1]);
    }
    tu_rng r;
    tu_rng_seed(&r, seed);
    size_t off = 0;
    for (size_t i = 0; i < L; i++) {
        size_t sz = n[i + 1] * (n[i] + 1);
        tu_fill_normal(&r, net->theta + off, sz, 1.0 / sqrt((double)n[i] + 1));
        off += sz;
    }
    tu_fill_normal(&r, net->theta + off, nv, 1.0);
}

void tu_mlp_free(tu_mlp *net)
{
    free(net->theta), free(net->X), free(net->Y), free(net->pex), free(net->g);
    for (size_t i = 0; i < net->L; i++)
        free(net->acts[i]), free(net->sig[i]);
}

curv_layout *tu_mlp_layout(const tu_mlp *net)
{
    curv_layout *l = curv_layout_new();
    assert_non_null(l);
    for (size_t i = 0; i < net->L; i++) {
        char name[24];
        snprintf(name, sizeof name, "l%zu", i);
        assert_int_equal(curv_layout_add_dense(l, name, net->n[i + 1], net->n[i], 1, NULL),
                         CURV_OK);
    }
    if (net->nv)
        assert_int_equal(curv_layout_add_vector(l, "gain", net->nv, NULL), CURV_OK);
    assert_int_equal(curv_layout_dim(l), net->dim);
    return l;
}

void tu_mlp_batch(tu_mlp *net, uint64_t seed)
{
    tu_rng r;
    tu_rng_seed(&r, seed);
    tu_fill_normal(&r, net->X, net->m * net->n[0], 1.0);
    tu_fill_normal(&r, net->Y, net->m * net->n[net->L], 1.0);
    net->loss = tu_mlp_eval(net, net->theta, 1);
}

/* Forward and backward pass of example @e at @th. */
static double mlp_example(tu_mlp *net, const double *th, size_t e, int full)
{
    double a[TU_MLP_MAX + 1][16], s[TU_MLP_MAX][16];
    const size_t L = net->L, *n = net->n;
    memcpy(a[0], net->X + e * n[0], n[0] * sizeof(double));
    size_t off[TU_MLP_MAX + 1] = {0};
    for (size_t i = 0; i < L; i++) {
        assert_true(n[i] <= 16 && n[i + 1] <= 16);
        off[i + 1] = off[i] + n[i + 1] * (n[i] + 1);
        for (size_t o = 0; o < n[i + 1]; o++) {
            const double *w = th + off[i] + o * (n[i] + 1);
            double z = w[n[i]];
            for (size_t j = 0; j < n[i]; j++)
                z += w[j] * a[i][j];
            a[i + 1][o] = i + 1 < L ? tanh(z) : z;
        }
    }
    double loss = 0;
    for (size_t o = 0; o < n[L]; o++) {
        s[L - 1][o] = a[L][o] - net->Y[e * n[L] + o];
        loss += 0.5 * s[L - 1][o] * s[L - 1][o];
    }
    const double *v = th + off[L];
    for (size_t j = 0; j < net->nv; j++)
        loss += 0.5 * (v[j] - 0.5) * (v[j] - 0.5);
    if (!full)
        return loss;
    for (size_t i = L - 1; i > 0; i--)
        for (size_t j = 0; j < n[i]; j++) {
            double acc = 0;
            for (size_t o = 0; o < n[i + 1]; o++)
                acc += th[off[i] + o * (n[i] + 1) + j] * s[i][o];
            s[i - 1][j] = acc * (1 - a[i][j] * a[i][j]);
        }
    double *p = net->pex + e * net->dim;
    for (size_t i = 0; i < L; i++) {
        memcpy(net->acts[i] + e * n[i], a[i], n[i] * sizeof(double));
        memcpy(net->sig[i] + e * n[i + 1], s[i], n[i + 1] * sizeof(double));
        for (size_t o = 0; o < n[i + 1]; o++) {
            for (size_t j = 0; j < n[i]; j++)
                p[off[i] + o * (n[i] + 1) + j] = s[i][o] * a[i][j];
            p[off[i] + o * (n[i] + 1) + n[i]] = s[i][o];
        }
    }
    for (size_t j = 0; j < net->nv; j++)
        p[off[L] + j] = v[j] - 0.5;
    return loss;
}

double tu_mlp_eval(tu_mlp *net, const double *theta, int full)
{
    double loss = 0;
    for (size_t e = 0; e < net->m; e++)
        loss += mlp_example(net, theta, e, full);
    if (full) {
        memset(net->g, 0, net->dim * sizeof(double));
        for (size_t e = 0; e < net->m; e++)
            for (size_t i = 0; i < net->dim; i++)
                net->g[i] += net->pex[e * net->dim + i] / (double)net->m;
        for (size_t i = 0; i < net->L; i++)
            net->stats[i] = (curv_layer_stats){.block = i,
                                               .rows = net->m,
                                               .examples = net->m,
                                               .acts = net->acts[i],
                                               .signals = net->sig[i]};
    }
    return loss / (double)net->m;
}

void tu_mlp_answer(tu_mlp *net, const curv_request *req, double *values)
{
    const size_t n = req->n_vectors, d = net->dim;
    assert_int_equal(req->dim, d);
    if (req->kind == CURV_REQ_LOSS) {
        double *th = tu_alloc(d);
        for (size_t r = 0; r < n; r++) {
            for (size_t i = 0; i < d; i++)
                th[i] = net->theta[i] + req->vectors[r * d + i];
            values[r] = tu_mlp_eval(net, th, 0);
        }
        free(th);
        return;
    }
    assert_int_equal(req->kind, CURV_REQ_QUADRATIC_FORM);
    double *pv = tu_alloc(n);
    memset(values, 0, n * n * sizeof(double));
    for (size_t e = 0; e < net->m; e++) {
        for (size_t r = 0; r < n; r++) {
            pv[r] = 0;
            for (size_t i = 0; i < d; i++)
                pv[r] += net->pex[e * d + i] * req->vectors[r * d + i];
        }
        for (size_t r = 0; r < n; r++)
            for (size_t c = 0; c < n; c++)
                values[r * n + c] += pv[r] * pv[c] / (double)net->m;
    }
    free(pv);
}

double tu_kfac_pi(size_t nr, const double *G, size_t nc, const double *A)
{
    double trA = 0, trG = 0;
    for (size_t i = 0; i < nc; i++)
        trA += A[i * nc + i];
    for (size_t i = 0; i < nr; i++)
        trG += G[i * nr + i];
    return sqrt((trA / (double)nc) / (trG / (double)nr));
}

double *tu_outer_mean(const double *X, size_t rows, size_t nx, int bias, double scale)
{
    size_t n = nx + (size_t)bias;
    double *F = tu_alloc(n * n);
    for (size_t r = 0; r < rows; r++)
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) {
                double xi = i < nx ? X[r * nx + i] : 1.0, xj = j < nx ? X[r * nx + j] : 1.0;
                F[i * n + j] += scale * xi * xj;
            }
    return F;
}

double *tu_kfac_damped_kron(size_t nr, const double *G, size_t nc, const double *A, double gamma)
{
    const double pi = tu_kfac_pi(nr, G, nc, A);
    const size_t n = nr * nc;
    double *K = tu_alloc(n * n);
    for (size_t i = 0; i < nr; i++)
        for (size_t j = 0; j < nr; j++)
            for (size_t k = 0; k < nc; k++)
                for (size_t q = 0; q < nc; q++)
                    K[(i * nc + k) * n + j * nc + q] = (G[i * nr + j] + (i == j) * gamma / pi) *
                                                       (A[k * nc + q] + (k == q) * pi * gamma);
    return K;
}

curv_layout *tu_mlp_setup(tu_mlp *net, const size_t *n, size_t L, size_t nv, size_t m,
                          uint64_t seed, uint64_t batch_seed)
{
    tu_mlp_new(net, n, L, nv, m, seed);
    tu_mlp_batch(net, batch_seed);
    return tu_mlp_layout(net);
}

void tu_mlp_teardown(curv_opt *o, curv_layout *l, tu_mlp *net)
{
    curv_opt_free(o);
    curv_layout_free(l);
    tu_mlp_free(net);
}

curv_step_input tu_mlp_input(const tu_mlp *net, int with_stats)
{
    return (curv_step_input){.grad = net->g,
                             .params = net->theta,
                             .len = net->dim,
                             .dtype = CURV_F64,
                             .layers = with_stats ? net->stats : NULL,
                             .n_layers = with_stats ? net->L : 0,
                             .loss = net->loss,
                             .has_loss = 1};
}

curv_status tu_mlp_step(curv_opt *o, tu_mlp *net, int with_stats, double *upd, tu_kfac_trace *trace,
                        curv_error *err)
{
    curv_step_input in = tu_mlp_input(net, with_stats);
    curv_request req;
    if (trace)
        trace->n = 0;
    curv_status st = curv_opt_step(o, &in, upd, &req, err);
    while (st == CURV_NEED_INPUT) {
        if (trace && trace->n < 4) {
            trace->kind[trace->n] = req.kind;
            trace->n_vectors[trace->n++] = req.n_vectors;
        }
        double *vals = tu_alloc(req.n_values);
        tu_mlp_answer(net, &req, vals);
        curv_response resp = {.seq = req.seq, .n_values = req.n_values, .values = vals};
        st = curv_opt_resume(o, &resp, CURV_F64, upd, &req, err);
        free(vals);
    }
    return st;
}
curv_status tu_load_copy(const unsigned char *b, size_t n, curv_opt **out)
{
    unsigned char *c = tu_memdup(b, n);
    curv_error err;
    curv_error_clear(&err);
    curv_status st = curv_opt_load(c, n, out, &err);
    tu_assert_error_set(&err, st);
    free(c);
    return st;
}

/* Header (24), u32 kind, u32 nblocks, then per block str name, u32 kind,
 * 5 u64, u32 bias. */
size_t tu_blob_hyper_offset(const unsigned char *b)
{
    size_t off = 24 + 4;
    size_t n = (size_t)tu_get_le(b + off, 4);
    off += 4;
    for (size_t i = 0; i < n; i++)
        off += 4 + (size_t)tu_get_le(b + off, 4) + 4 + 5 * 8 + 4;
    return off;
}

void tu_blob_damage_rejected(const char *what, const unsigned char *blob, size_t len)
{
    static char mark;
    curv_opt *sentinel = (curv_opt *)&mark;
    unsigned char *b = tu_memdup(blob, len);
    for (size_t i = 0; i < len; i++) {
        memcpy(b, blob, len);
        b[i] ^= 0xFF;
        curv_opt *out = sentinel;
        curv_status st = tu_load_copy(b, len, &out);
        if (st != CURV_E_CORRUPT && st != CURV_E_VERSION)
            fail_msg("%s: flipping byte %zu of %zu gave %s", what, i, len, curv_status_name(st));
        assert_ptr_equal(out, sentinel);
    }
    for (size_t n = 0; n < len; n++) {
        curv_opt *out = sentinel;
        curv_status st = tu_load_copy(blob, n, &out);
        if (st != CURV_E_CORRUPT)
            fail_msg("%s: truncation to %zu of %zu bytes gave %s", what, n, len,
                     curv_status_name(st));
        assert_ptr_equal(out, sentinel);
    }
    free(b);
}

/* Layout records are left out: a flipped dimension can legitimately ask
 * for gigabytes. */
void tu_blob_flips_never_crash(const char *what, const unsigned char *blob, size_t len)
{
    size_t from = tu_blob_hyper_offset(blob), ok = 0;
    assert_true(from < len - 4);
    unsigned char *b = tu_memdup(blob, len);
    static const unsigned char masks[] = {0x01, 0xFF};
    for (size_t i = from; i < len - 4; i++)
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(b, blob, len);
            b[i] ^= masks[m];
            tu_reseal(b, len);
            curv_opt *out = NULL;
            curv_status st = tu_load_copy(b, len, &out);
            if (st != CURV_OK && st != CURV_E_CORRUPT)
                fail_msg("%s: byte %zu: %s", what, i, curv_status_name(st));
            ok += st == CURV_OK;
            curv_opt_free(out);
        }
    free(b);
    assert_true(ok > 0); /* the state's numbers are free to change */
}

void tu_mlp_advance(tu_mlp *net, const double *u, uint64_t seed)
{
    for (size_t i = 0; i < net->dim; i++)
        net->theta[i] += u[i];
    tu_mlp_batch(net, seed);
}

double tu_dot(const double *x, const double *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * y[i];
    return s;
}
