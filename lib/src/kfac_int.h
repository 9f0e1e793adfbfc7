/* SPDX-License-Identifier: MIT */
/*
 * K-FAC internals, split as the design hint asks: curvature block
 * types behind one small vtable (kfac_block.c), an estimator that owns the
 * blocks and the averaging / refresh policy (kfac_est.c), pure adaptation
 * rules (kfac_adapt.c) and the optimizer loop (kfac.c), which talks only
 * to the estimator.
 */
#ifndef CURV_KFAC_INT_H
#define CURV_KFAC_INT_H

#include "opt_int.h"

enum { CURV__KFAC_ADAPTIVE = 0, CURV__KFAC_SIMPLE = 1 };
enum { CURV__KFAC_BLOCKDIAG = 0, CURV__KFAC_TRIDIAG = 1 };
enum { CURV__KFAC_RHO_REQUEST = 0, CURV__KFAC_RHO_NEXT_STEP = 1 };
enum { CURV__KFAC_PI_TRACE = 0, CURV__KFAC_PI_ONE = 1 };
enum { CURV__KFAC_FB_ADAGRAD = 0, CURV__KFAC_FB_SGD = 1 };
enum { CURV__KFAC_COEF_BOX = 0, CURV__KFAC_COEF_FREE = 1 };
enum { CURV__KFAC_GAMMA_SQRT_LAMBDA = 0, CURV__KFAC_GAMMA_GRID = 1 };
enum { CURV__KFAC_FP64 = 0, CURV__KFAC_FP32 = 1 };
enum { CURV__KFAC_NOISE_FISHER = 0, CURV__KFAC_NOISE_OFF = 1 };
enum { CURV__KFAC_REFRESH_AUTO = 0, CURV__KFAC_REFRESH_EIGEN = 1, CURV__KFAC_REFRESH_CHOLESKY = 2 };

/* The hyperparameters (kfac.c's table); blocks read the fallback and
 * factor settings through a pointer to the optimizer's copy, so
 * curv_opt_reconfigure reaches them. */
struct curv__kfac_hyper {
    struct curv__sched sched;
    int mode, inverse, fisher, rho_source, pi_mode, fallback;
    int adaptive_momentum;
    double momentum, damping, lambda_init, weight_decay, decay;
    double lambda_decay, gamma_decay, min_damping;
    double fallback_lr, fallback_eps;
    int64_t cov_interval, inv_interval, lambda_interval, gamma_interval;
    int64_t max_factor_dim, max_failures;
    int coefficients;         /* adaptive: CURV__KFAC_COEF_* */
    double alpha_max, mu_max; /* adaptive: the box of the (α, μ) solve */
    int reject_rise;          /* adaptive: a measured rise of h undoes the step */
    double kl_clip;           /* simple: bound on ∇hᵀF̆⁻¹∇h (0: off) */
    int gamma_rule;           /* adaptive: CURV__KFAC_GAMMA_* */
    int precision;            /* CURV__KFAC_FP*: the multiply's arithmetic */
    int noise;                /* adaptive: CURV__KFAC_NOISE_* */
    double noise_floor;       /* adaptive: share of ∇hᵀΔ the noise leaves at least */
    int noise_momentum;       /* simple: the noise bound is on the velocity's step */
    int64_t max_staleness;    /* periodic refreshes applied this many steps late (0: in step) */
    int refresh;              /* CURV__KFAC_REFRESH_*: how dense sides are refreshed */
};

/* Whether a refresh forms each dense side's damped inverse (F + cI)⁻¹ by
 * Cholesky instead of eigendecomposing F (kfac_block.c): refresh = auto or
 * cholesky where there is one damping, simple mode with the block-diagonal
 * inverse; refresh = eigen, adaptive mode and the tridiagonal inverse keep
 * the eigendecomposition. Fixed for a session. */
int curv__kfac_cholesky(const struct curv__kfac_hyper *h);

/* ---- curvature blocks (kfac_block.c) ---------------------------------- */

/* Most damping candidates in one step (the γ grid of §6.6.6). */
#define CURV__KFAC_MAX_CAND 3

/* One Kronecker factor: dense n x n with the eigendecomposition of its
 * last refresh, or diagonal (n entries; its own eigenvalues) when n is
 * above max_factor_dim. The *_new arrays hold this step's tentative values
 * until the step completes (NULL when not computed this step).
 * A dense side may also hold the explicit damped inverse
 * Q diag(1/(w + c)) Qᵀ of its committed decomposition for one damping c
 * (inv, inv_damp; NULL when none): a cache rebuilt from Q, w and c, never
 * saved. Per candidate of the step, use[] is the explicit inverse the
 * multiply applies (NULL: the eigenbasis form) and cinv[] the ones formed
 * this step (tentative).
 * With precision = fp32 (f32 = 1) the multiply runs in float: the explicit
 * inverses (inv, cinv, use) are n x n floats and a dense side also keeps
 * Qf (Qf_new), its eigenvectors rounded to float for the eigenbasis form;
 * each step's Σ x xᵀ of a dense side is a float SYRK, but F (the EMA), Q
 * and w stay double.
 * A dense side on the Cholesky route (chol = 1, curv__kfac_cholesky) has
 * no Q, w or Qf: its refresh keeps P = (F + cI)⁻¹ for the damping c of that
 * refresh (pc), in double, its float copy Pf in fp32, and its degrees of
 * freedom Σ w/(w + c) = n − c·tr P (dof); P_new (Pf_new, pc_new, dof_new)
 * the tentative ones (P_new NULL: none this step). The multiply applies
 * P (Pf) whatever its candidates. */
struct curv__kside {
    size_t n;
    int diag, f32, chol;
    double *F, *Q, *w;
    double *F_new, *Q_new, *w_new;
    float *Qf, *Qf_new;
    double *P, *P_new;
    float *Pf, *Pf_new;
    double pc, pc_new, dof, dof_new;
    void *inv;
    double inv_damp;
    void *cinv[CURV__KFAC_MAX_CAND];
    double cdamp[CURV__KFAC_MAX_CAND];
    const void *use[CURV__KFAC_MAX_CAND];
};

struct curv__kblock;

/* The stamps of a block's saved parts (curv__w_part): its factors, its
 * decompositions (with π), and what changes with every step (fallback). */
struct curv__kstamps {
    uint64_t factors, inverse, steps;
};

/*
 * A block type. Everything a step computes is tentative until commit (or
 * dropped by abort), so that a failed or interrupted step changes nothing:
 *  - stats:   fold @li's statistics into new factor estimates with decay @eps;
 *             CURV_E_NUMERIC when they come out non-finite;
 *  - refresh: decompose the latest factors (new ones if stats ran);
 *  - prepare: (NULL for blocks without factors) get the multiply of each
 *             of the @n candidate γ's ready: form the explicit damped
 *             inverses the flop rule asks for (curv__kside_explicit with
 *             @horizon), reusing the cached ones; CURV_E_NOMEM;
 *  - apply:   u = P_γ g on the block's slice (P the damped inverse) for
 *             candidate @cand of the last prepare (the eigenbasis form
 *             when there was none); @work holds 2 * rows * cols doubles
 *             (4 * rows * cols floats in fp32);
 *  - commit:  make the tentative values current, candidate @cand's
 *             inverses the cached ones; @g is the step's gradient;
 *  - save / load / bytes / free.
 */
struct curv__kblock_vt {
    curv_status (*stats)(struct curv__kblock *b, const struct curv__layer_in *li, double eps,
                         curv_error *err);
    curv_status (*refresh)(struct curv__kblock *b, curv_error *err);
    curv_status (*prepare)(struct curv__kblock *b, const double *gammas, size_t n, unsigned horizon,
                           curv_error *err);
    void (*apply)(const struct curv__kblock *b, size_t cand, const double *g, double gamma,
                  double *u, double *work);
    void (*commit)(struct curv__kblock *b, size_t cand, const double *g);
    void (*abort)(struct curv__kblock *b);
    void (*save)(const struct curv__kblock *b, struct curv__writer *w,
                 const struct curv__kstamps *st);
    void (*load)(struct curv__kblock *b, struct curv__reader *r);
    size_t (*bytes)(const struct curv__kblock *b);
    void (*free)(struct curv__kblock *b);
};

struct curv__kblock {
    const struct curv__kblock_vt *vt;
    const struct curv__kfac_hyper *h;
    curv_block_info info;    /* name borrowed from the optimizer's layout */
    int kron;                /* 1: Kronecker-factored (takes statistics) */
    struct curv__kside A, G; /* kron: input factor (cols) and output factor (rows) */
    double pi, pi_new;       /* kron: factored-damping split at the last refresh */
    double *r;               /* fallback adagrad_diag: Σ g² */
    size_t n_cand;           /* candidates of the last prepare (0: none) */
    double cgamma[CURV__KFAC_MAX_CAND];
};

/*
 * curv__kside_explicit - the multiply's rule for one dense side of n
 * entries against @n_other on the other side: apply the explicit damped
 * inverse (one GEMM, 2 n² n_other flops) rather than the eigenbasis form
 * (two GEMMs around a scaling, 4 n² n_other) when forming it (one SYRK of
 * Q diag(1/sqrt(w + c)), n³ flops) is paid back within @horizon uses:
 * n³ <= horizon · 2 n² n_other, i.e. n <= 2 · horizon · n_other.
 */
int curv__kside_explicit(size_t n, size_t n_other, unsigned horizon);

/* curv__kblock_new - the block type for layout block @info: Kronecker
 * factors for dense and conv2d blocks (a side above max_factor_dim is
 * diagonal), the fallback for vector blocks; allocated through @t
 * (curv__tally). NULL when out of memory or only counting. */
struct curv__kblock *curv__kblock_new(const curv_block_info *info, const struct curv__kfac_hyper *h,
                                      struct curv__tally *t);

/* A Kronecker block's decomposition computed apart from the block (slot
 * 0 the input side A, 1 the output side G; Q and Qf NULL for a diagonal
 * side, Qf NULL in fp64; a Cholesky side's P, Pf, c and dof instead of Q,
 * w and Qf) and its damping split π. */
struct curv__keig {
    double *Q[2], *w[2];
    float *Qf[2];
    double *P[2];
    float *Pf[2];
    double c[2], dof[2];
    double pi;
};

/* curv__kblock_decompose - decompose factors @FA, @FG shaped as @b's
 * sides (the newest ones, or a snapshot of them) with π by @pi_mode into
 * @out; a Cholesky side gets its damped inverse for damping @gamma (c_A =
 * γπ, c_G = γ/π). Reads only the factors and @b's fixed shape, so a
 * snapshot may be decomposed on another thread while @b steps.
 * CURV_E_NUMERIC (not finite, or a damped factor not positive definite),
 * CURV_E_NOMEM; on failure @out holds nothing. */
curv_status curv__kblock_decompose(const struct curv__kblock *b, const double *FA, const double *FG,
                                   int pi_mode, double gamma, struct curv__keig *out,
                                   curv_error *err);
/* Whether @b's committed Cholesky inverses were formed for a damping other
 * than the current one (a settings change since): the estimator then
 * refreshes it from the current factors in the next step. */
int curv__kblock_stale(const struct curv__kblock *b);
/* Make @x @b's tentative decomposition (as a refresh at this step would),
 * taking its arrays: @x is left empty. */
void curv__kblock_install(struct curv__kblock *b, struct curv__keig *x);
/* Make the factors a stats call computed @b's current ones, leaving its
 * decompositions and inverses as they are (a fold settled after its step:
 * curv__kfac_est_settle). */
void curv__kblock_take_factors(struct curv__kblock *b);
/* Free what @x holds; it is left empty. */
void curv__keig_free(struct curv__keig *x);

/* The first element of a fallback block whose AdaGrad sum r + g² (@g the
 * block's slice of ∇h) would not be finite; SIZE_MAX when none (and for
 * other blocks). */
size_t curv__kblock_sum_overflow(const struct curv__kblock *b, const double *g);

/* tr(P F̆) of a Kronecker block for damping @gamma: the degrees of freedom
 * its preconditioner leaves (0 for other blocks). A Cholesky side counts
 * with the damping its inverse was formed for (the one the multiply
 * applies). */
double curv__kblock_dof(const struct curv__kblock *b, double gamma);

/* Doubles a saved block holds at least (for saved_doubles); SIZE_MAX on
 * overflow. */
size_t curv__kblock_saved(const curv_block_info *info, const struct curv__kfac_hyper *h);

/* Doubles of a side's factor: n for a diagonal side, n² for a dense one. */
size_t curv__kside_len(const struct curv__kside *s);

/* curv__kside_F - the newest factor (the tentative one when computed
 * this step). */
const double *curv__kside_F(const struct curv__kside *s);

/* curv__kblock_damped - the damped factor of the newest decomposition as a
 * dense matrix: Q diag(w + πγ) Qᵀ for the input side (@side 0), Q diag(w +
 * γ/π) Qᵀ for the output side (1); n x n into @out, @tmp n x n scratch.
 * Dense sides only. */
void curv__kblock_damped(const struct curv__kblock *b, int side, double gamma, double *out,
                         double *tmp);

/* ---- block-tridiagonal chains (kfac_chain.c) -------------------------- */

/*
 * A chain: a maximal run of >= 2 consecutive dense blocks with dense
 * factors where each block's input is the previous block's output. It
 * keeps the cross factors E[ā_i ā_{i+1}ᵀ], E[g_i g_{i+1}ᵀ] (EMAs from the
 * same rows and ε as the blocks' own), their snapshot at the last refresh,
 * and the kfac_tri inverse built for one γ (rebuilt after loading).
 */
struct curv__kchain;

/* Find the chains of @l (none unless inverse = tridiag), allocated through
 * @t (curv__tally); *@n gets their number (0 when counting). CURV_E_NOMEM. */
curv_status curv__kchains_new(const curv_layout *l, const struct curv__kfac_hyper *h,
                              struct curv__tally *t, struct curv__kchain ***out, size_t *n,
                              curv_error *err);
void curv__kchains_free(struct curv__kchain **c, size_t n);
/* Whether layout block @i belongs to a chain (its inverse is the chain's). */
int curv__kchain_member(struct curv__kchain *const *c, size_t n, size_t i);
/* Fold the step's cross statistics in (tentative); every block of a chain
 * must send statistics with the same rows in the same step. */
curv_status curv__kchain_stats(struct curv__kchain *c, const struct curv__step_args *a,
                               curv_error *err);
/* Snapshot the cross factors for a refresh at this step (tentative). */
void curv__kchain_refreshed(struct curv__kchain *c);
/* Build (tentatively) the inverse for each of the @n candidate γ's from
 * the blocks' newest decompositions, reusing the current one where it
 * was built for the same γ and nothing was refreshed. A build that fails
 * numerically falls back to the current inverse when there is one
 * (*@kept = 1, CURV_E_NUMERIC returned for the caller to count). */
curv_status curv__kchain_prepare(struct curv__kchain *c, struct curv__kblock *const *blocks,
                                 const double *gammas, size_t n, int *kept, curv_error *err);
/* u = F̂⁻¹ g on the chain's blocks, candidate @cand. */
void curv__kchain_apply(const struct curv__kchain *c, size_t cand, const double *g, double *u);
void curv__kchain_commit(struct curv__kchain *c, size_t cand);
void curv__kchain_abort(struct curv__kchain *c);
/* Saves the cross factors (stamped by the chain's statistics updates) and
 * their snapshot (stamped @snap: the refresh step of the chain's first
 * block, at which it was taken). */
void curv__kchain_save(const struct curv__kchain *c, struct curv__writer *w, uint64_t snap);
void curv__kchain_load(struct curv__kchain *c, struct curv__reader *r);
size_t curv__kchain_bytes(const struct curv__kchain *c);
/* Denominators clamped by the inverse in use (candidate @cand after
 * prepare). */
size_t curv__kchain_clamped(const struct curv__kchain *c, size_t cand);
/* The chain's first block and length. */
size_t curv__kchain_first(const struct curv__kchain *c);
size_t curv__kchain_len(const struct curv__kchain *c);

/* ---- refreshes off the step path (kfac_defer.c) ----------------------- */

struct curv_refresh; /* curv/exec.h */

/* A refresh deferred from step @from (a copy of the factors that step
 * commits, its newest ones, for the blocks @which flags among @n) to step
 * @due; with @fill 0 only the room for the copy, which curv__kdefer_fill
 * makes later (the step's statistics folded after it). NULL: out of
 * memory. */
struct curv_refresh *curv__kdefer_new(struct curv__kblock *const *b, const unsigned char *which,
                                      size_t n, uint64_t from, uint64_t due, int pi_mode,
                                      double gamma, int fill);
/* Copy the blocks' newest factors into @r's snapshots. */
void curv__kdefer_fill(struct curv_refresh *r);
void curv__kdefer_free(struct curv_refresh *r);
uint64_t curv__kdefer_due(const struct curv_refresh *r);
uint64_t curv__kdefer_from(const struct curv_refresh *r);
/* Whether layout block @i takes part. */
int curv__kdefer_has(const struct curv_refresh *r, size_t i);
/* Compute what nobody has computed yet, a block a task on @ex (NULL or
 * one worker: in order on the caller's thread). */
void curv__kdefer_ensure(struct curv_refresh *r, const curv_executor *ex);
/* Block @i's decomposition made @b's tentative one (computed first if
 * needed); its refresh's status, with the sentence in @err. */
curv_status curv__kdefer_install(struct curv_refresh *r, size_t i, struct curv__kblock *b,
                                 curv_error *err);
/* The pending refresh (@r may be NULL: none) of an estimator of @n
 * blocks: its steps, which blocks, their snapshots (parts stamped by
 * @from). */
void curv__kdefer_save(const struct curv_refresh *r, size_t n, struct curv__writer *w);
/* What curv__kdefer_save wrote, for an optimizer at @steps completed
 * steps: NULL when none or on error (@rd->bad for bad content, *@nomem
 * when out of memory). */
struct curv_refresh *curv__kdefer_load(struct curv__reader *rd, struct curv__kblock *const *b,
                                       size_t n, int pi_mode, double gamma, uint64_t steps,
                                       int64_t max_staleness, int *nomem);
size_t curv__kdefer_bytes(const struct curv_refresh *r);

/* ---- the estimator (kfac_est.c) --------------------------------------- */

struct curv__kfac_est;

/* The estimator for @l, allocated through @t (curv__tally); counting, it
 * allocates nothing and *@out is NULL. CURV_E_NOMEM. */
curv_status curv__kfac_est_new(const curv_layout *l, const struct curv__kfac_hyper *h,
                               struct curv__tally *t, struct curv__kfac_est **out, curv_error *err);
void curv__kfac_est_free(struct curv__kfac_est *e);
/* Whether step @k is one where statistics are due (every cov_interval
 * steps from step 1). */
int curv__kfac_stats_due(const struct curv__kfac_hyper *h, uint64_t k);
/*
 * curv__kfac_est_update - the statistics and inverse policy of step @k:
 * fold in the step's layer statistics (refusing a step where they are due
 * but missing), then refresh every block's inverse when k <= 3, k is a
 * multiple of inv_interval, or a block has none yet. A block whose
 * statistics or inverse fail keeps its previous ones, up to max_failures
 * in a row; *@failed counts those. Tentative until commit or abort;
 * what an earlier step left tentative (a cancelled one) is dropped first.
 */
curv_status curv__kfac_est_update(struct curv__kfac_est *e, const struct curv__step_args *a,
                                  uint64_t k, int later, unsigned *failed, curv_error *err);
/*
 * With @later (above) a step whose update cannot depend on its statistics
 * (fold_later_ok) leaves them unfolded: once it commits, the estimator
 * holds a borrowed pointer to @a->layers until curv__kfac_est_settle
 * folds them in (on the executor, on the calling thread), with the
 * snapshot of a refresh the step deferred and the books the step would
 * have written. Settle returns the failures it counted (tolerated, as
 * the step made sure); curv__kfac_est_fold_pending says whether one
 * awaits. Every other estimator call but report and bytes expects none.
 */
unsigned curv__kfac_est_settle(struct curv__kfac_est *e);
int curv__kfac_est_fold_pending(const struct curv__kfac_est *e);
/*
 * curv__kfac_est_prepare - make the preconditioners for the @n damping
 * strengths @gammas ready: the explicit damped inverses the flop rule asks
 * for (kfac_block.c; cached ones reused) and the tridiagonal chains (built
 * per γ). Tentative.
 */
curv_status curv__kfac_est_prepare(struct curv__kfac_est *e, const double *gammas, size_t n,
                                   unsigned *failed, curv_error *err);
/* u = P g with candidate @c (of the last prepare) of damping @gamma. */
void curv__kfac_est_apply(struct curv__kfac_est *e, size_t c, double gamma, const double *g,
                          double *u);
/* Σ over blocks of curv__kblock_dof. */
double curv__kfac_est_dof(const struct curv__kfac_est *e, double gamma);
/* Keep candidate @c's tentative state; @g is the step's gradient. */
void curv__kfac_est_commit(struct curv__kfac_est *e, size_t c, const double *g, uint64_t k);
void curv__kfac_est_abort(struct curv__kfac_est *e);
/* Save the committed state; @steps is the optimizer's curv__steps_stamp. */
void curv__kfac_est_save(const struct curv__kfac_est *e, struct curv__writer *w, uint64_t steps);
/* Load what curv__kfac_est_save wrote for an optimizer at @steps
 * completed steps (bad content sets @r->bad). CURV_E_NOMEM. */
curv_status curv__kfac_est_load(struct curv__kfac_est *e, struct curv__reader *r, uint64_t steps,
                                curv_error *err);
/* The first element of ∇h @g whose fallback sum r + g² would not be
 * finite (SIZE_MAX: none). */
size_t curv__kfac_est_sum_overflow(const struct curv__kfac_est *e, const double *g);
/* The deferred refresh awaiting its step (NULL: none). */
struct curv_refresh *curv__kfac_est_pending(struct curv__kfac_est *e);
/* Bytes of state held. */
size_t curv__kfac_est_bytes(const struct curv__kfac_est *e);
/* Run the per-block work on @ex (copied; NULL: serially on the calling
 * thread), with scratch for each of its workers. CURV_E_NOMEM leaves @e
 * unchanged. */
curv_status curv__kfac_est_set_executor(struct curv__kfac_est *e, const curv_executor *ex,
                                        curv_error *err);
/* Report entries: inverse_age.<block> for each Kronecker block at step @k,
 * and the clamp count of the last tridiagonal build. */
void curv__kfac_est_report(const struct curv__kfac_est *e, curv_opt *o, uint64_t k);
/* Number of report entries curv__kfac_est_report adds at most. */
size_t curv__kfac_est_report_size(const curv_layout *l);
/* The estimator's block for layout block @i (tests and reports). */
const struct curv__kblock *curv__kfac_est_block(const struct curv__kfac_est *e, size_t i);

/* ---- pure rules (kfac_adapt.c) ---------------------------------------- */

/* ε = min(1 − 1/k, decay) for the k-th statistics update (k >= 1). */
double curv__kfac_eps(uint64_t k, double decay);
/* π = sqrt((tr A / nA) / (tr G / nG)) (thesis §6.6.3, trace norm); 1 when
 * a trace is not positive or the result is not finite (a dead layer). */
double curv__kfac_pi(double trA, size_t nA, double trG, size_t nG);

/* The quadratic model of one candidate (thesis §6.6.4, §6.7). */
struct curv__kfac_quad {
    double q11, q12, q22; /* Δᵀ(F+(λ+η)I)Δ, Δᵀ(F+(λ+η)I)δ0, δ0ᵀ(F+(λ+η)I)δ0 */
    double g1, g2;        /* ∇hᵀΔ, ∇hᵀδ0 */
    int has_mom;          /* δ0 takes part */
};
/* Bounds on the re-scaling coefficients (NULL: the thesis' free solve). */
struct curv__kfac_box {
    double alpha_max, mu_max;
};
/*
 * curv__kfac_solve - α and μ minimising M(αΔ + μδ0): the 2x2 solve of
 * §6.7, or α = −g1/q11, μ = 0 without momentum (§6.6.4) or when the 2x2
 * system is singular (det <= 1e-12 q11 q22) or its answer not finite.
 * With @box the minimum is taken over 0 <= α <= alpha_max,
 * 0 <= μ <= mu_max (docs/NOTES.md, "K-FAC safeguards"). *@m gets
 * M(δ) − M(0). Returns 0 (α = μ = 0, M = 0) when q11 <= 0 or α is not
 * finite: the step is rejected (ALGORITHMS.md §3.6).
 */
int curv__kfac_solve(const struct curv__kfac_quad *q, const struct curv__kfac_box *box,
                     double *alpha, double *mu, double *m);
/* M(αΔ + μδ0) − M(0) for any α, μ. */
double curv__kfac_model(const struct curv__kfac_quad *q, double alpha, double mu);
/* Levenberg–Marquardt (§6.6.5): λω1 when ρ > 3/4, λ/ω1 when ρ < 1/4. */
double curv__kfac_lm(double lambda, double rho, double omega1);
/* γ candidates of §6.6.6: {γ, ω2 γ, γ/ω2} into @out. */
void curv__kfac_gammas(double gamma, double omega2, double out[3]);
/*
 * curv__kfac_gram_check - index of the first entry making the n x n Gram
 * matrix @g unusable (asymmetric beyond a relative 1e-6, or a diagonal
 * more negative than an FP32 trainer's round-off: 1e-6 of the largest
 * entry plus @damp[i], the damping the library adds to that diagonal), or
 * n*n when it is fine. @damp may be NULL (no damping).
 */
size_t curv__kfac_gram_check(const double *g, size_t n, const double *damp);

/* ---- introspection for tests (kfac.c) --------------------------------- */

/* The estimator of a K-FAC optimizer, NULL for another kind. */
const struct curv__kfac_est *curv__kfac_estimator(const curv_opt *o);

#endif
