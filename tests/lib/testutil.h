/* SPDX-License-Identifier: MIT */
/* Shared helpers for the cmocka suites: a seeded RNG, dense reference math
 * written independently of the library, layouts, configs and optimizer
 * steps, state snapshots, and the blob format's LE fields and CRC. */
#ifndef CURV_TESTUTIL_H
#define CURV_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "curv.h"

/* Deterministic RNG (splitmix64). */
typedef struct {
    uint64_t s;
} tu_rng;
void tu_rng_seed(tu_rng *r, uint64_t seed);
double tu_uniform(tu_rng *r); /* [0, 1) */
uint64_t tu_u64(tu_rng *r);   /* 64 random bits */
double tu_normal(tu_rng *r);  /* N(0, 1) */
/* tu_same_bits - a and b are the same double, bit for bit (-0 != 0, NaN == NaN). */
int tu_same_bits(double a, double b);
void tu_fill_normal(tu_rng *r, double *x, size_t n, double scale);

/* n x n row-major helpers (lda = n). */
double *tu_alloc(size_t n); /* zeroed, asserts on failure */
void tu_matmul(size_t m, size_t k, size_t n, const double *A, const double *B, double *C);
void tu_rand_spd(tu_rng *r, size_t n, double min_eig, double *A); /* random SPD */
/* Reference symmetric power via Jacobi eigenvalue iterations (independent
 * of LAPACK): out = R max(w, floor)^p R^T. */
void tu_sym_pow(size_t n, const double *A, double p, double floor, double *out);
/* The same with eigenvalues floored at floor_rel * max(w); returns the
 * smallest eigenvalue before flooring, so callers can see the floor act. */
double tu_sym_pow_rel(size_t n, const double *A, double p, double floor_rel, double *out);
/* max |a-b| / max(max|b|, tiny) over n entries. */
double tu_rel_err(const double *a, const double *b, size_t n);

/* x = M^-1 b for n x n @M by Gauss-Jordan with partial pivoting
 * (independent of LAPACK). */
void tu_gj_solve(size_t n, const double *M, const double *b, double *x);
/* The inverse of n x n @M into @out, Gauss-Jordan with partial pivoting
 * (asserting a nonzero pivot). */
void tu_gj_inverse(size_t n, const double *M, double *out);

/* Jacobi eigendecomposition of symmetric n x n @A (independent of LAPACK):
 * A = Q diag(w) Q^T, eigenvectors as the columns of @Q, @w unsorted. */
void tu_sym_eig(size_t n, const double *A, double *Q, double *w);
/* Q diag(f) Q^T for n x n @Q (columns the eigenvectors) into @out. */
void tu_from_eig(size_t n, const double *Q, const double *f, double *out);
/* Fail with "@what, step @t: relative error ..." when tu_rel_err(@got, @want,
 * @n) exceeds @tol. */
void tu_expect_close(const double *got, const double *want, size_t n, double tol, const char *what,
                     int t);

/* ---- Layouts and optimizers ---- */

/* A "mixed" layout, blocks in this order, each with its bias: dense of
 * n_out x (n_in + bias); conv2d of c_out x (c_in * kh * kw + bias), left
 * out when its name is NULL; vector of n. */
typedef struct {
    struct {
        const char *name;
        size_t n_out, n_in;
    } dense;
    struct {
        const char *name;
        size_t c_out, c_in, kh, kw;
    } conv;
    struct {
        const char *name;
        size_t n;
    } vector;
    size_t dim; /* asserted to be the flat dimension, unless 0 */
} tu_mixed_spec;

/* Build @s's layout, asserting every step (caller frees). */
curv_layout *tu_mixed_layout(const tu_mixed_spec *s);

/* The mixed layout of the front-end suites (test_opt.c, test_opt_state.c):
 * fc: dense 3 x (4 + bias) = 15 at 0; conv: 2 x (2*2*2 + bias) = 18 at 15;
 * gain: vector 4 at 33. */
#define TU_D_MIXED 37
curv_layout *tu_opt_mixed_layout(void);

/* A numeric setting, for tables of settings. */
typedef struct {
    const char *key;
    double num;
} tu_kv;

/* Set @key on @c to the string @str, or to the number @num when @str is
 * NULL, asserting CURV_OK. */
void tu_config_set(curv_config *c, const char *key, double num, const char *str);
/* A new config holding the @n settings @kv, set in order (caller frees). */
curv_config *tu_config(const tu_kv *kv, size_t n);
/* A new optimizer, asserting CURV_OK; @c may be NULL for the defaults. */
curv_opt *tu_new_opt(curv_opt_kind kind, const curv_layout *l, const curv_config *c);
/* tu_new_opt with a config of the @n settings @kv (freed again). */
curv_opt *tu_opt_with(curv_opt_kind kind, const curv_layout *l, const tu_kv *kv, size_t n);
/* A new K-FAC optimizer with the numeric settings @kv (@n of them), then
 * string settings given as key, value pairs ended by a NULL key (a NULL
 * value leaves that key at its default), asserting CURV_OK. The precision
 * is fp64 unless a pair names it (the default is fp32, but the tests'
 * dense references are float64 and hold fp64 to 1e-10 and below). */
curv_opt *tu_kfac_opt(const curv_layout *l, const tu_kv *kv, size_t n, ...);
/* 1 when @kind has a hyperparameter called @name, else 0. */
int tu_has_param(curv_opt_kind kind, const char *name);

/* One float64 step of @o: gradient @g, parameters @theta (may be NULL),
 * update into @upd; the length is the layout's dimension. */
curv_status tu_step(curv_opt *o, const double *g, const double *theta, double *upd,
                    curv_error *err);
/* tu_step, asserting CURV_OK. */
void tu_step_ok(curv_opt *o, const double *g, const double *theta, double *upd);

/* 1 when @kind exists and a plain gradient step drives it (tu_step): it
 * asks for no input and reads no layer statistics. Loops over every kind
 * skip the others, whose own suites cover the same properties. */
int tu_plain_kind(int kind);

/* The value of entry @name of @o's step report (fails the test when the
 * report has no such entry). */
double tu_report(const curv_opt *o, const char *name);

/* ---- Kinds that ask for input (CURV_NEED_INPUT) ---- */

/* Fill @values (@req->n_values of them) with the answer to @req. */
typedef void (*tu_answer_fn)(void *ctx, const curv_request *req, double *values);

/* Take one step of @o with @in, answering every request with @answer
 * until the step ends; the update (in @in->dtype) goes to @upd. Returns
 * the last status; *@n_req (may be NULL) gets the number of requests. */
curv_status tu_drive(curv_opt *o, const curv_step_input *in, tu_answer_fn answer, void *ctx,
                     void *upd, size_t *n_req, curv_error *err);

/* A trainer whose objective is the quadratic h(θ + v) = h0 + gᵀv + ½vᵀGv
 * around the current θ (dense d x d @G, borrowed): CURVATURE_PRODUCT is
 * answered with G v, LOSS with h(θ + v), QUADRATIC_FORM with V G Vᵀ. */
typedef struct {
    size_t d;
    const double *G, *g;
    double h0;
} tu_quad;
void tu_quad_answer(void *ctx, const curv_request *req, double *values);
/* h0 + gᵀv + ½vᵀGv. */
double tu_quad_loss(const tu_quad *q, const double *v);

/* ---- Saved state ---- */

/* Save @o and return the blob (caller frees with curv_free). */
unsigned char *tu_snapshot(const curv_opt *o, size_t *len);
/* Assert that @o's saved state equals the snapshot byte for byte. */
void tu_assert_unchanged(const curv_opt *o, const unsigned char *snap, size_t len);

/* The blob format's pieces, written here independently of lib/src/state.c
 * (which the state tests test): little-endian fields of @n bytes, and the
 * CRC-32 trailer (IEEE, reflected, polynomial 0xEDB88320; table-driven,
 * the table built bit by bit here; test_state.c pins it to the standard
 * check value). */
void tu_put_le(unsigned char *p, uint64_t v, unsigned n);
uint64_t tu_get_le(const unsigned char *p, unsigned n);
uint32_t tu_crc32(const unsigned char *p, size_t n);
/* Recompute the CRC trailer (the last 4 bytes) of an edited @len-byte blob. */
void tu_reseal(unsigned char *blob, size_t len);
/* Copy the @len-byte blob @src into @dst, set its @n-byte field at @off to
 * @v and reseal; returns @dst. */
unsigned char *tu_forge(unsigned char *dst, const unsigned char *src, size_t len, size_t off,
                        uint64_t v, unsigned n);
/* A heap copy of exactly @n bytes of @p, so that ASan sees any over-read
 * (caller frees with free()). */
unsigned char *tu_memdup(const void *p, size_t n);
/* curv_opt_load of a heap copy of exactly @n bytes of @b (so ASan sees any
 * over-read), asserting that an error leaves text in the error. */
curv_status tu_load_copy(const unsigned char *b, size_t n, curv_opt **out);
/* Offset of the hyperparameter records in a blob (after the layout). */
size_t tu_blob_hyper_offset(const unsigned char *b);
/* Every flipped byte and every truncation of @blob is refused with
 * E_CORRUPT (or E_VERSION), writing no optimizer; @what names the case. */
void tu_blob_damage_rejected(const char *what, const unsigned char *blob, size_t len);
/* Flips past the layout records with a recomputed CRC reach the parser:
 * each loads (a changed number) or is E_CORRUPT, never a crash or leak,
 * and some load. */
void tu_blob_flips_never_crash(const char *what, const unsigned char *blob, size_t len);
/* After a call returned @st into @err: unless @st is CURV_OK, @err holds
 * @st and a non-empty text. */
void tu_assert_error_set(const curv_error *err, curv_status st);

/* Assert a status, printing the error text on mismatch. */
#define tu_assert_status(expr, want, errp)                                                         \
    do {                                                                                           \
        const curv_error *tu_e_ = (errp);                                                          \
        curv_status tu_st_ = (expr);                                                               \
        if (tu_st_ != (want))                                                                      \
            print_error("got %s, want %s: %s\n", curv_status_name(tu_st_), curv_status_name(want), \
                        tu_e_ ? tu_e_->text : "");                                                 \
        assert_int_equal(tu_st_, (want));                                                          \
    } while (0)

/* ---- K-FAC driver: a tiny tanh MLP with a linear output layer ----
 * Loss per example: ½‖z − y‖² + ½‖v − ½‖² (v: an optional vector block
 * "gain" that only this term touches, for the fallback). Layer i is the
 * dense block "l<i>" of n[i+1] x (n[i] + bias), blocks in order, then
 * "gain". Signals are per-example derivatives of the example's own loss
 * (K-FAC's convention), per-example gradients are formed explicitly. */
#define TU_MLP_MAX 4
typedef struct {
    size_t L, n[TU_MLP_MAX + 1], nv, dim, m;
    double *theta, *X, *Y;
    double *acts[TU_MLP_MAX], *sig[TU_MLP_MAX]; /* m x n[i], m x n[i+1] */
    double *pex;                                /* m x dim per-example gradients */
    double *g;                                  /* mean gradient */
    double loss;                                /* mean loss at theta */
    curv_layer_stats stats[TU_MLP_MAX];
} tu_mlp;

/* A network of @L layers with widths @n[0..L], @nv gain entries, batches
 * of @m examples, weights from @seed (caller frees with tu_mlp_free). */
void tu_mlp_new(tu_mlp *net, const size_t *n, size_t L, size_t nv, size_t m, uint64_t seed);
void tu_mlp_free(tu_mlp *net);
curv_layout *tu_mlp_layout(const tu_mlp *net);
/* Draw a new batch and evaluate it at theta (acts, signals, pex, g, loss). */
void tu_mlp_batch(tu_mlp *net, uint64_t seed);
/* θ ← θ + @u, then a new batch (@seed) evaluated there. */
void tu_mlp_advance(tu_mlp *net, const double *u, uint64_t seed);
/* xᵀy. */
double tu_dot(const double *x, const double *y, size_t n);
/* tu_mlp_new, then tu_mlp_batch(@batch_seed); returns the layout. */
curv_layout *tu_mlp_setup(tu_mlp *net, const size_t *n, size_t L, size_t nv, size_t m,
                          uint64_t seed, uint64_t batch_seed);
/* Free @o, @l and @net (the end of a K-FAC test). */
void tu_mlp_teardown(curv_opt *o, curv_layout *l, tu_mlp *net);
/* The float64 step input of the current batch: gradient, params, loss,
 * and the layer statistics when @with_stats. */
curv_step_input tu_mlp_input(const tu_mlp *net, int with_stats);
/* Evaluate the batch at @theta; with @full also acts, signals, pex, g. */
double tu_mlp_eval(tu_mlp *net, const double *theta, int full);
/* The answer to a K-FAC request on the current batch: QUADRATIC_FORM as
 * (1/m) Σ_e (p_e·v_i)(p_e·v_j) (p_e the per-example gradients: an exact
 * PSD curvature), LOSS as the data loss at theta + v. */
void tu_mlp_answer(tu_mlp *net, const curv_request *req, double *values);

/* K-FAC's damping split from the traces of nr x nr @G and nc x nc @A:
 * π = sqrt((tr A / nc) / (tr G / nr)). */
double tu_kfac_pi(size_t nr, const double *G, size_t nc, const double *A);
/* Â = @scale Σ_rows ā āᵀ over @rows rows of @X (nx each), ā = [x, 1]
 * when @bias: (nx + bias) x (nx + bias), caller frees. */
double *tu_outer_mean(const double *X, size_t rows, size_t nx, int bias, double scale);
/* The damped Kronecker block (G + γ/π I) ⊗ (A + πγ I), π by tu_kfac_pi,
 * as an (nr nc) x (nr nc) matrix (caller frees). */
double *tu_kfac_damped_kron(size_t nr, const double *G, size_t nc, const double *A, double gamma);

/* What one driven step asked for. */
typedef struct {
    int n;
    curv_request_kind kind[4];
    size_t n_vectors[4];
} tu_kfac_trace;

/* One step on the current batch: statistics when @with_stats, the loss,
 * the params; answers every request. Returns the last status; the update
 * goes to @upd. @trace may be NULL. */
curv_status tu_mlp_step(curv_opt *o, tu_mlp *net, int with_stats, double *upd, tu_kfac_trace *trace,
                        curv_error *err);

#endif
