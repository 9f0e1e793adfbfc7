/* SPDX-License-Identifier: MIT */
/*
 * K-FAC (Martens' thesis ch. 6 = Martens & Grosse 2015, with its
 * appendices; ALGORITHMS.md §3): the optimizer loop. The curvature lives
 * in the estimator (kfac_est.c, block types in kfac_block.c); the rules
 * for α, μ, λ and γ are pure functions in kfac_adapt.c.
 *
 * Scaling convention (pinned by tests/lib/test_kfac.c):
 *  - grad: the mini-batch MEAN gradient of every block;
 *  - acts: the layer's inputs per row, without the homogeneous 1 (the
 *    library appends it when the block has a bias);
 *  - signals: per-example derivatives of THAT example's own loss with
 *    respect to the layer's pre-activations, NOT divided by the batch size
 *    (a trainer backpropagating a mean-reduced loss multiplies its signals
 *    by the number of examples).
 *   Dense:  Â = (1/m) Σ_rows ā āᵀ,  Ĝ = (1/m) Σ_rows g gᵀ,  m = rows;
 *   conv2d (KFC): Â = mean over rows (examples x positions) of ā āᵀ,
 *           Ĝ = (1/examples) Σ_rows g gᵀ (summed over positions).
 *   Then Ĝ ⊗ Â (row-major flat order) is one example's Fisher block
 *   exactly when m = 1, and the thesis' independence approximation of the
 *   batch Fisher block otherwise.
 *  - "fisher": true (signals from targets sampled from the model's
 *    predictive distribution, as the thesis recommends, §6.5) or empirical
 *    (the training targets): recorded and reported; the math is the same.
 *
 * Adaptive mode (Alg. 7), step k with h = data loss + η/2‖θ‖²:
 *   ∇h = grad + ηθ; factor EMAs; inverses refreshed when k <= 3 or
 *   k ≡ 0 (mod inv_interval); Γ = {γ} or {γ, ω2γ, γ/ω2} when
 *   k ≡ 0 (mod gamma_interval); Δ_γ = −P_γ ∇h;
 *   request QUADRATIC_FORM over {Δ_γ..., δ0}: the Gram matrix of the
 *   UNDAMPED exact Fisher/GGN on the trainer's mini-batch (the library adds
 *   (λ+η)‖·‖² itself); per γ the α, μ minimising M; keep the γ with the
 *   lowest M; δ = αΔ + μδ0; when k ≡ 0 (mod lambda_interval) request LOSS
 *   at θ + δ (rho_source = request) or read it from the next step's loss
 *   (next_step: a different mini-batch), ρ = (h(θ+δ) − h(θ)) / M(δ) and
 *   the Levenberg–Marquardt rule. The library adds η/2‖θ‖² to the losses.
 * Simple mode: Δ = −lr v, v ← μv + P_damping ∇h; no requests.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "curv/exec.h"
#include "kfac_int.h"

#define H struct curv__kfac_hyper
static const struct curv__param PARAMS[] = {
    CURV__SCHED_PARAMS(H, sched, 1.0,
                       "a multiplier of the step (the base of the schedule): adaptive mode takes "
                       "lr·(αΔ + μδ0) with α, μ from the exact-F model, simple mode −lr·v; a "
                       "scheduler or a PATCH scales K-FAC's steps with it"),
    CURV__ENUM(H, mode, "mode", "adaptive", "adaptive|simple",
               "adaptive: the thesis' damping, re-scaling and momentum, asking the trainer for "
               "quadratic forms and losses; simple: Δ = −lr·v, v ← μv + F̆⁻¹∇h with a fixed "
               "damping, one round trip per step (lr and momentum are used only here)"),
    CURV__ENUM(H, inverse, "inverse", "blockdiag", "blockdiag|tridiag",
               "approximate Fisher inverse: block-diagonal (§6.4.2) or block-tridiagonal over "
               "chains of consecutive dense layers (§6.4.3)"),
    CURV__ENUM(H, fisher, "fisher", "true", "true|empirical",
               "how the trainer draws the targets behind the signals: sampled from the model "
               "(true Fisher, as the thesis recommends) or the training targets (empirical)"),
    CURV__REAL(H, momentum, "momentum", 0.9, 0, 0.9999, "simple mode: momentum μ"),
    CURV__REAL(H, damping, "damping", 0.3, 1e-12, 1e6,
               "simple mode: the factored Tikhonov strength γ (fixed; (Ā + πγI) ⊗ (G + γ/π I), "
               "so about γ² is added to the Fisher's eigenvalues); 0.3 with kl_clip 3e-4 from a "
               "sweep on the BMA CNN and the ReLU MLP (docs/NOTES.md, \"K-FAC simple mode's "
               "defaults\"; 1e-3 diverged)"),
    CURV__BOOL(H, adaptive_momentum, "adaptive_momentum", 1,
               "adaptive mode: δ = αΔ + μδ0 with α, μ from the 2x2 solve (§6.7); 0: μ = 0"),
    CURV__REAL(H, lambda_init, "lambda_init", 150, 1e-12, 1e12,
               "initial λ (thesis: 150, 'err on the side of too large'); γ starts at "
               "sqrt(λ + η)"),
    CURV__REAL(H, weight_decay, "weight_decay", 1e-5, 0, 1e6,
               "ℓ2 coefficient η (thesis §6.13: 1e-5): ∇h += ηθ, (λ+η) in the model, η/2‖θ‖² "
               "added to losses; η > 0 needs the params with every step"),
    CURV__REAL(H, decay, "decay", 0.95, 0, 0.99999,
               "factor EMA: ε = min(1 − 1/k, decay), k counting statistics updates (§6.5)"),
    CURV__INT(H, cov_interval, "cov_interval", 1, 1, 1e9,
              "T_cov: statistics are due every this many steps (from step 1)"),
    CURV__INT(H, inv_interval, "inv_interval", 20, 1, 1e9,
              "T3: inverses are recomputed when k ≡ 0 (mod T3) and for k <= 3"),
    CURV__INT(H, lambda_interval, "lambda_interval", 5, 1, 1e9,
              "T1: λ is adapted (and the loss at θ + δ asked for) every T1 steps"),
    CURV__INT(H, gamma_interval, "gamma_interval", 20, 1, 1e9,
              "T2: γ is chosen among {γ, ω2γ, γ/ω2} every T2 steps"),
    CURV__ENUM(H, gamma_rule, "gamma_rule", "sqrt_lambda", "sqrt_lambda|grid",
               "adaptive mode: γ tied to each step's λ, γ = sqrt(λ + η) (§6.6.6's starting "
               "point; one candidate per step), or chosen from the grid {γ, ω2γ, γ/ω2} every T2 "
               "steps (§6.6.6; on the autoencoder it drove γ up to 34 and cost 10% of the loss "
               "at iteration 100: docs/NOTES.md)"),
    CURV__REAL(H, lambda_decay, "lambda_decay", 0.9, 1e-6, 1,
               "ω1 = lambda_decay^T1: λ ← ω1λ when ρ > 3/4, λ/ω1 when ρ < 1/4 (thesis: "
               "(19/20)^T1; 0.9 is kfac-jax's damping_adaptation_decay: on the autoencoder ρ "
               "stayed at 1.4-2.0 for 100 steps under 19/20, damping-bound, and 0.9 reached the "
               "same error in two thirds of the iterations; docs/NOTES.md)"),
    CURV__REAL(H, gamma_decay, "gamma_decay", 0.97467943448089633, 1e-6, 1,
               "ω2 = gamma_decay^T2 (thesis: sqrt(19/20)^T2)"),
    CURV__REAL(H, min_damping, "min_damping", 1e-8, 0, 1e6,
               "floor for λ and γ (not in the thesis: keeps a run of good steps from driving "
               "the damping to 0)"),
    CURV__ENUM(H, rho_source, "rho_source", "request", "request|next_step",
               "h(θ+δ) for ρ: asked for with a LOSS request on the same mini-batch, or taken "
               "from the next step's loss (a different mini-batch: noisier, one round trip "
               "fewer)"),
    CURV__ENUM(H, pi_mode, "pi", "trace", "trace|one",
               "factored damping split π: the trace-norm formula of §6.6.3, or 1"),
    CURV__INT(H, max_factor_dim, "max_factor_dim", 4096, 1, 65536,
              "a factor side larger than this is kept diagonal instead of n x n"),
    CURV__INT(H, max_failures, "max_failures", 3, 0, 1e9,
              "a block whose statistics or inverse fail keeps its previous ones for this many "
              "steps in a row; one more is CURV_E_NUMERIC"),
    CURV__ENUM(H, precision, "precision", "fp32", "fp64|fp32",
               "the arithmetic of the per-step work: fp32 runs the factors' SYRK over the rows, "
               "the forming of the explicit damped inverses and the multiply's GEMMs in float "
               "(about twice as fast, no more memory); the factor EMA, the eigendecomposition "
               "and the saved state stay float64. The autoencoder trains identically and the "
               "CNN within seed-to-seed noise (docs/NOTES.md, \"K-FAC precision\"); fixed for a "
               "session; states saved before it existed continue in fp64"),
    CURV__INT(H, max_staleness, "max_staleness", 0, 0, 1e9,
              "s >= 1: a periodic refresh due at step k (past step 3) decomposes the factors "
              "committed at k off the step path (curv_refresh_run; the daemon's workers) and "
              "step k + s applies it, computing it first if nobody has; 0: in the step. Applies "
              "while s < inv_interval and the inverse is blockdiag; the results are the same "
              "whoever computes it and when; fixed for a session"),
    CURV__ENUM(H, refresh, "refresh", "auto", "auto|eigen|cholesky",
               "how a refresh inverts a dense factor: eigen keeps its eigendecomposition (any "
               "damping applies without a new one); cholesky forms the damped inverse (F + cI)⁻¹ "
               "for the one damping there is (dpotrf + dpotri, about 5 times faster than the "
               "eigendecomposition; a change of damping refreshes from the current factors at the "
               "next step) and needs mode = simple with inverse = blockdiag; auto: cholesky "
               "there, eigen elsewhere (docs/NOTES.md, \"K-FAC Cholesky refresh\"); fixed for a "
               "session; states saved before it existed continue with eigen"),
    CURV__ENUM(H, fallback, "fallback", "adagrad_diag", "adagrad_diag|sgd",
               "optimizer for vector blocks (no Kronecker factors)"),
    CURV__REAL(H, fallback_lr, "fallback_lr", 0.01, 0, 1e6,
               "vector blocks: their part of the proposal is fallback_lr times the "
               "fallback's direction"),
    CURV__REAL(H, fallback_eps, "fallback_eps", 1e-8, 1e-300, 1, "ε of the adagrad_diag fallback"),
    CURV__ENUM(H, coefficients, "coefficients", "box", "box|free",
               "adaptive mode: α and μ minimise M over 0 <= α <= alpha_max, 0 <= μ <= mu_max "
               "(box), or anywhere (free: the thesis' 2x2 solve, whose α and μ stray far on a "
               "small curvature batch; docs/NOTES.md)"),
    CURV__REAL(H, alpha_max, "alpha_max", 10, 0, 1e12,
               "box: the exact-F re-scaling may shrink the K-FAC step Δ but lengthen it at most "
               "this many times (α = 1 is the step the factored model itself proposes)"),
    CURV__REAL(H, mu_max, "mu_max", 0.95, 0, 1e12,
               "box: largest momentum μ (thesis §3: a friction constant in [0, 1))"),
    CURV__BOOL(H, reject_rise, "reject_rise", 1,
               "adaptive mode: a step whose loss h(θ+δ), asked for at a λ step, is above h(θ) "
               "is not applied (δ = 0, momentum dropped) and λ rises (HF's and "
               "Levenberg–Marquardt's rule); 0: the thesis keeps every step"),
    CURV__REAL(H, kl_clip, "kl_clip", 3e-4, 0, 1e12,
               "simple mode: v = F̆⁻¹∇h is scaled by min(1, sqrt(kl_clip / ∇hᵀv)) before "
               "momentum and lr, bounding its squared length in the damped approximate Fisher "
               "(after kfac-pytorch's KL clip, which also counts lr²: here lr keeps its effect "
               "while the clip binds). It binds at most steps, so with noise_momentum's bound it "
               "sets the step's length: on the BMA CNN damping 1 with 1e-3 (kfac-pytorch's "
               "default) ended at 0.71, the defaults 0.3 and 3e-4 at 0.64 (docs/NOTES.md, "
               "\"K-FAC simple mode's defaults\"); 0: off"),
    CURV__ENUM(H, noise, "noise", "fisher", "fisher|off",
               "the share of ∇hᵀΔ that is the batch's sampling noise, tr(F̆_γ⁻¹F̆)/m over "
               "−∇hᵀΔ (m the step's batch, or the statistics' examples when not sent; the "
               "per-example gradients' covariance taken as the Fisher), shortens the step: "
               "adaptive mode fits α, μ to the model's mean over batches, ∇hᵀΔ less that share; "
               "simple mode scales v by 1 − share (times 1 − μ with noise_momentum) unless the KL "
               "clip is tighter (docs/NOTES.md: "
               "on the BMA CNN at m = 128 it ends adaptive mode's noise floor); off: the batch's "
               "model (the thesis'; "
               "also right for full-batch training)"),
    CURV__BOOL(H, noise_momentum, "noise_momentum", 1,
               "simple mode, noise = fisher: the noise bound is on the step the velocity makes, "
               "v/(1 − μ) in a persistent direction, so v is scaled by at most (1 − μ)·max("
               "noise_floor, 1 − share) (with the KL clip, the tighter holds); 0: on v itself, "
               "where the clip was always tighter and the run settled at the clip's floor "
               "(docs/NOTES.md, \"K-FAC simple mode's defaults\")"),
    CURV__REAL(H, noise_floor, "noise_floor", 0.1, 0, 1,
               "noise = fisher: the step keeps at least this share (1 − share >= noise_floor; "
               "on the CNN 0 stalled at 0.70, 0.05 reached 0.66, 0.1 0.63)"),
};
#undef H

/* The step in flight (adaptive mode), dropped or committed as a whole. */
struct pend {
    int stage;     /* 0 none, 1 awaiting the Gram matrix, 2 awaiting the loss */
    double *g;     /* ∇h, with ηθ */
    double *vec;   /* rows: Δ per γ candidate, then δ0 */
    double *delta; /* the chosen δ */
    size_t nc;     /* γ candidates */
    int has_mom;   /* δ0 is the last row of vec */
    double gammas[3];
    double lambda; /* λ of this step (after a next-step ρ) */
    double rho;    /* ρ computed this step, NAN if none */
    double h0;     /* h(θ), with η/2‖θ‖²; NAN without a loss */
    double th_sq;  /* ‖θ‖² */
    double th_dot[4];
    unsigned failed; /* blocks that kept old factors or inverses */
    int stats;       /* statistics were sent */
    size_t c;        /* chosen candidate */
    double alpha, mu, m;
    double lr;    /* adaptive: the multiplier of the chosen step */
    size_t batch; /* examples behind ∇h (0: unknown, no noise term) */
    double noise; /* the noise's estimated share of −∇hᵀΔ (chosen γ) */
    double clip;  /* simple: the KL clip's scale of v */
    int rejected; /* 1: no usable model (q11 <= 0); 2: the loss rose */
};

struct kfac_state {
    struct curv__kfac_est *est;
    double lambda, gamma;
    uint64_t seq;      /* next request seq, unique over the optimizer's life */
    uint64_t failures; /* tolerated failures so far */
    double *mom;       /* δ0 (adaptive) or the velocity (simple) */
    int has_mom;
    int rho_pending; /* next_step: ρ of the last step awaits this step's loss */
    double rho_h0, rho_m;
    int defer_stats; /* the caller's opt-in: curv_opt_defer_stats */
    struct pend p;
};

static const struct curv__kfac_hyper *hyp(const curv_opt *o)
{
    return o->hyper;
}

static void pend_drop(struct kfac_state *s)
{
    curv__free(s->p.g);
    curv__free(s->p.vec);
    curv__free(s->p.delta);
    memset(&s->p, 0, sizeof s->p);
}

static void kfac_fini(curv_opt *o)
{
    struct kfac_state *s = o->impl;
    pend_drop(s);
    curv__kfac_est_free(s->est);
    curv__free(s->mom);
    curv__free(s);
}

static double clampd(double v, double lo)
{
    return v > lo ? v : lo;
}

static curv_status kfac_init(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state scratch, *s = curv__tally_obj(t, &scratch, sizeof *s);
    if (!s)
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory");
    o->impl = s;
    if (h->refresh == CURV__KFAC_REFRESH_CHOLESKY && !curv__kfac_cholesky(h))
        return curv__fail(err, CURV_E_INVALID,
                          "kfac: refresh = cholesky needs mode = simple and inverse = blockdiag "
                          "(one damping); use auto or eigen");
    s->lambda = h->lambda_init;
    s->gamma = sqrt(h->lambda_init + h->weight_decay);
    s->seq = 1;
    s->mom = curv__tally_calloc(t, o->dim, sizeof(double));
    if (t->failed)
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for %zu entries", o->dim);
    curv_status st = curv__kfac_est_new(o->layout, h, t, &s->est, err);
    if (st == CURV_OK)
        st = curv__report_reserve(o, t, 16 + curv__kfac_est_report_size(o->layout), err);
    return st;
}

static void report(curv_opt *o)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    const uint64_t k = o->t + 1;
    curv__report_add(o, h->mode, "mode");
    curv__report_add(o, h->fisher, "fisher");
    curv__report_add(o, h->mode == CURV__KFAC_SIMPLE ? h->damping : s->gamma, "gamma");
    if (h->mode == CURV__KFAC_ADAPTIVE) {
        curv__report_add(o, s->lambda, "lambda");
        if (!isnan(s->p.rho))
            curv__report_add(o, s->p.rho, "rho");
        curv__report_add(o, s->p.alpha, "alpha");
        curv__report_add(o, s->p.mu, "mu");
        curv__report_add(o, s->p.m, "model_change");
        curv__report_add(o, s->p.rejected, "rejected");
    } else {
        curv__report_add(o, s->p.clip, "kl_scale");
    }
    curv__report_add(o, s->p.noise, "noise_share");
    curv__report_add(o, (double)s->failures, "inverse_failures");
    curv__report_add(o, s->p.stats, "stats_updated");
    curv__kfac_est_report(s->est, o, k);
}

/* Make the step's tentative state current and report. */
static void commit(curv_opt *o, double lambda, double gamma)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    curv__kfac_est_commit(s->est, s->p.c, s->p.g, o->t + 1);
    s->lambda = clampd(lambda, h->min_damping);
    s->gamma = clampd(gamma, h->min_damping);
    s->failures += s->p.failed;
    report(o);
    pend_drop(s);
}

/* Index of the entry of largest magnitude. */
static size_t largest_at(const double *x, size_t n)
{
    size_t at = 0;
    for (size_t i = 1; i < n; i++)
        if (fabs(x[i]) > fabs(x[at]))
            at = i;
    return at;
}

/* Checks, ∇h and the estimator update shared by both modes. */
static curv_status begin(curv_opt *o, const struct curv__step_args *a, curv_error *err)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    const uint64_t k = o->t + 1;
    const double eta = h->weight_decay;
    const int adaptive = h->mode == CURV__KFAC_ADAPTIVE;
    if (eta > 0 && !a->theta)
        return curv__fail(err, CURV_E_INVALID,
                          "kfac: weight_decay = %g needs the params vector with every step", eta);
    if (adaptive && !a->has_loss && (k % (uint64_t)h->lambda_interval == 0 || s->rho_pending))
        return curv__fail(err, CURV_E_INVALID, "kfac: step %llu needs the loss h(θ) (%s)",
                          (unsigned long long)k,
                          s->rho_pending ? "rho_source = next_step: it finishes ρ of the last step"
                                         : "λ is adapted at this step");
    pend_drop(s);
    s->p.rho = NAN;
    s->p.h0 = NAN;
    s->p.lambda = s->lambda;
    s->p.stats = a->n_layers > 0;
    s->p.batch = a->batch;
    for (size_t i = 0; !a->batch && i < a->n_layers; i++)
        if (a->layers[i].examples > s->p.batch)
            s->p.batch = a->layers[i].examples;
    if (!(s->p.g = curv__malloc_n(o->dim, sizeof(double)))) /* written whole below */
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for %zu entries", o->dim);
    if (eta > 0)
        for (size_t i = 0; i < o->dim; i++)
            s->p.g[i] = a->g[i] + eta * a->theta[i];
    else
        memcpy(s->p.g, a->g, o->dim * sizeof(double));
    /* θ enters only through the weight decay: without it a huge θ is
     * nobody's business; with it, ∇h, ‖θ‖² and h(θ) must stay finite. */
    if (eta > 0)
        s->p.th_sq = curv__dot(a->theta, a->theta, o->dim);
    if (a->has_loss)
        s->p.h0 = a->loss + (eta > 0 ? 0.5 * eta * s->p.th_sq : 0.0);
    /* Without the weight decay ∇h is g, whose values the input's check found finite. */
    size_t bad = eta > 0 ? curv__first_nonfinite(s->p.g, o->dim) : o->dim;
    if (bad == o->dim && !(isfinite(s->p.th_sq) && (!a->has_loss || isfinite(s->p.h0))))
        bad = largest_at(a->theta, o->dim);
    if (bad < o->dim) {
        pend_drop(s);
        return curv__overflow(o, bad, "the weight decay's ∇h = g + ηθ or η/2‖θ‖²", err);
    }
    if ((bad = curv__kfac_est_sum_overflow(s->est, s->p.g)) != SIZE_MAX) {
        pend_drop(s);
        return curv__overflow(o, bad, "the fallback's sum of squared gradients r + g²", err);
    }
    curv_status st =
        curv__kfac_est_update(s->est, a, k, !adaptive && s->defer_stats, &s->p.failed, err);
    if (st != CURV_OK) {
        pend_drop(s);
        return st;
    }
    if (adaptive && s->rho_pending) {
        s->p.rho = (s->p.h0 - s->rho_h0) / s->rho_m;
        s->p.lambda = clampd(
            curv__kfac_lm(s->lambda, s->p.rho, pow(h->lambda_decay, (double)h->lambda_interval)),
            h->min_damping);
    }
    return CURV_OK;
}

/*
 * The batch's noise in a linear term @g1 = ∇hᵀΔ (noise = fisher), Δ = −P_γ∇h
 * built from the same noisy ∇h: over mini-batches E[∇hᵀP∇h] exceeds the
 * mean gradient's ∇̄hᵀP∇̄h by tr(PΣ)/m, Σ the per-example gradients'
 * covariance, which the Fisher approximates (F̆ for F): tr(P_γF̆)/m, the
 * degrees of freedom the damping leaves over the batch size m. Returns its
 * share of −g1 (0 when off or the batch is unknown).
 */
static double noise_share(const curv_opt *o, double g1, double gamma)
{
    const struct kfac_state *s = o->impl;
    if (hyp(o)->noise == CURV__KFAC_NOISE_OFF || !s->p.batch || !(g1 < 0))
        return 0;
    return curv__kfac_est_dof(s->est, gamma) / (double)s->p.batch / -g1;
}

/* Refuse the step (nothing changed: the estimator's tentative state and the
 * step in flight are dropped) when the @n values at @v overflowed; in fp32
 * the float multiply's range is the limit. */
static curv_status refuse_overflow(curv_opt *o, const double *v, size_t n, const char *what,
                                   curv_error *err)
{
    struct kfac_state *s = o->impl;
    size_t bad = curv__first_nonfinite(v, n);
    if (bad == n)
        return CURV_OK;
    curv__kfac_est_abort(s->est);
    pend_drop(s);
    return curv__overflow(o, bad % o->dim, what, err);
}

/* Simple mode's velocity v = μ·mom + scale·δ (mom NULL: no momentum, v =
 * scale·δ; scale 1 leaves δ as it is) into @delta; nonzero when v or
 * lr·v is not finite somewhere. */
CURV__VECTOR_CLONES static uint64_t velocity(double *delta, const double *mom, size_t n,
                                             double scale, double mu, double lr)
{
    uint64_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const double di = scale < 1 ? delta[i] * scale : delta[i];
        const double v = mom ? mu * mom[i] + di : di;
        bad |= curv__nonfinite_bits(v) | curv__nonfinite_bits(lr * v);
        delta[i] = v;
    }
    return bad;
}

/* The velocity @delta kept in @mom (NULL: none), and the update −lr·v. */
CURV__VECTOR_CLONES static void commit_velocity(double *delta, double *mom, size_t n, double lr)
{
    for (size_t i = 0; i < n; i++) {
        if (mom)
            mom[i] = delta[i];
        delta[i] *= -lr;
    }
}

static curv_status simple_step(curv_opt *o, double *delta, curv_error *err)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    const double lr = curv__sched_lr(&h->sched, o->t + 1), mu = h->momentum;
    curv_status st = curv__kfac_est_prepare(s->est, &h->damping, 1, &s->p.failed, err);
    if (st != CURV_OK) {
        curv__kfac_est_abort(s->est);
        pend_drop(s);
        return st;
    }
    curv__kfac_est_apply(s->est, 0, h->damping, s->p.g, delta);
    /* Passes over the d entries (a step's arithmetic outside the GEMMs is
     * memory-bound), each vectorized: vᵀ∇h, which is finite unless
     * something in v is not or it overflowed (only then is v searched);
     * v's scaled velocity into delta, checked before any state is written
     * (searched only when a value is not finite); the commit of the
     * velocity and the update; Σ update² (update_norm). */
    const double vg = curv__dot(delta, s->p.g, o->dim);
    if (!isfinite(vg) &&
        (st = refuse_overflow(o, delta, o->dim, "the preconditioned gradient", err)) != CURV_OK)
        return st;
    /* Two bounds on the step v: the clip's trust region, and the share
     * of v that is not the batch's noise; the tighter one holds. */
    s->p.clip = h->kl_clip > 0 && vg > h->kl_clip ? sqrt(h->kl_clip / vg) : 1.0;
    s->p.noise = noise_share(o, -vg, h->damping);
    const double signal = fmax(h->noise_floor, 1.0 - s->p.noise);
    const int on_velocity = h->noise_momentum && h->noise != CURV__KFAC_NOISE_OFF;
    const double scale = fmin(s->p.clip, on_velocity ? (1.0 - mu) * signal : signal);
    if (velocity(delta, mu > 0 ? s->mom : NULL, o->dim, scale, mu, lr)) {
        size_t i = 0;
        while (i + 1 < o->dim && isfinite(delta[i]) && isfinite(lr * delta[i]))
            i++;
        curv__kfac_est_abort(s->est);
        pend_drop(s);
        return curv__overflow(o, i, "the velocity μv + F̆⁻¹∇h or the update", err);
    }
    commit_velocity(delta, mu > 0 ? s->mom : NULL, o->dim, lr);
    s->has_mom |= mu > 0;
    commit(o, s->lambda, s->gamma);
    curv__report_update_sumsq(o, curv__dot(delta, delta, o->dim));
    return CURV_OK;
}

static curv_status kfac_step(curv_opt *o, const struct curv__step_args *a, double *delta,
                             curv_request *req, curv_error *err)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    const uint64_t k = o->t + 1;
    curv_status st = begin(o, a, err);
    if (st != CURV_OK)
        return st;
    if (h->mode == CURV__KFAC_SIMPLE)
        return simple_step(o, delta, err);
    struct pend *p = &s->p;
    p->lr = curv__sched_lr(&h->sched, k);
    const int tied = h->gamma_rule == CURV__KFAC_GAMMA_SQRT_LAMBDA;
    p->nc = !tied && k % (uint64_t)h->gamma_interval == 0 ? 3 : 1;
    curv__kfac_gammas(tied ? sqrt(p->lambda + h->weight_decay) : s->gamma,
                      pow(h->gamma_decay, (double)h->gamma_interval), p->gammas);
    p->has_mom = h->adaptive_momentum && s->has_mom;
    const size_t rows = p->nc + (size_t)p->has_mom, d = o->dim;
    if (!(p->vec = curv__calloc_n(rows * d, sizeof(double))) ||
        !(p->delta = curv__calloc_n(d, sizeof(double))))
        st = curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for %zu x %zu", rows, d);
    if (st == CURV_OK)
        st = curv__kfac_est_prepare(s->est, p->gammas, p->nc, &p->failed, err);
    if (st != CURV_OK) {
        curv__kfac_est_abort(s->est);
        pend_drop(s);
        return st;
    }
    for (size_t c = 0; c < p->nc; c++) {
        double *row = p->vec + c * d;
        curv__kfac_est_apply(s->est, c, p->gammas[c], p->g, row);
        for (size_t i = 0; i < d; i++)
            row[i] = -row[i];
    }
    if ((st = refuse_overflow(o, p->vec, p->nc * d, "the proposal Δ = −P∇h", err)) != CURV_OK)
        return st;
    if (p->has_mom)
        memcpy(p->vec + p->nc * d, s->mom, d * sizeof(double));
    for (size_t r = 0; h->weight_decay > 0 && r < rows; r++)
        p->th_dot[r] = curv__dot(a->theta, p->vec + r * d, d);
    p->stage = 1;
    *req = (curv_request){.kind = CURV_REQ_QUADRATIC_FORM,
                          .seq = s->seq++,
                          .n_vectors = rows,
                          .dim = d,
                          .vectors = p->vec};
    return CURV_NEED_INPUT;
}

/* The exact model of candidate @c from the Gram matrix (thesis §6.6.4,
 * §6.7): the library adds (λ+η)‖·‖² to the trainer's undamped forms. */
static struct curv__kfac_quad quad_of(const curv_opt *o, const double *gram, size_t c)
{
    const struct kfac_state *s = o->impl;
    const struct pend *p = &s->p;
    const size_t d = o->dim, n = p->nc + (size_t)p->has_mom, m = p->nc;
    const double lam = p->lambda + hyp(o)->weight_decay;
    const double *dc = p->vec + c * d, *d0 = p->vec + m * d;
    struct curv__kfac_quad q = {.q11 = gram[c * n + c] + lam * curv__dot(dc, dc, d),
                                .g1 = curv__dot(p->g, dc, d),
                                .has_mom = p->has_mom};
    if (p->has_mom) {
        q.q12 = gram[c * n + m] + lam * curv__dot(dc, d0, d);
        q.q22 = gram[m * n + m] + lam * curv__dot(d0, d0, d);
        q.g2 = curv__dot(p->g, d0, d);
    }
    return q;
}

/* Per candidate, α and μ on the model's mean over batches (the linear term
 * without the noise's share, kept at noise_floor at least); keep the lowest
 * M. The step taken is lr·(αΔ + μδ0): lr is a scheduler's handle on the
 * chosen step. M (hence ρ) is the step's on this batch's model, which the
 * loss measured on this batch checks. */
static void choose(curv_opt *o, const double *gram)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    struct pend *p = &s->p;
    const size_t d = o->dim;
    const struct curv__kfac_box bounds = {h->alpha_max, h->mu_max};
    const struct curv__kfac_box *box = h->coefficients == CURV__KFAC_COEF_BOX ? &bounds : NULL;
    double best = 0;
    p->rejected = 1;
    for (size_t c = 0; c < p->nc; c++) {
        struct curv__kfac_quad q = quad_of(o, gram, c);
        const double share = noise_share(o, q.g1, p->gammas[c]);
        q.g1 *= fmax(h->noise_floor, 1.0 - share);
        double al, mu, mc;
        if (curv__kfac_solve(&q, box, &al, &mu, &mc) && (p->rejected || mc < best)) {
            p->rejected = 0;
            p->c = c, p->alpha = al, p->mu = mu, p->noise = share, best = mc;
        }
    }
    p->m = 0;
    if (p->rejected) {
        p->c = 0, p->alpha = p->mu = p->noise = 0;
        return;
    }
    const double a = p->lr * p->alpha, u = p->lr * p->mu;
    const double *dc = p->vec + p->c * d, *d0 = p->vec + p->nc * d;
    for (size_t i = 0; i < d; i++)
        p->delta[i] = a * dc[i] + (p->has_mom ? u * d0[i] : 0.0);
    struct curv__kfac_quad q = quad_of(o, gram, p->c);
    p->m = curv__kfac_model(&q, a, u);
}

/* Finish an adaptive step with λ from ρ (when measured). */
static curv_status finish(curv_opt *o, double *delta, double lambda)
{
    struct kfac_state *s = o->impl;
    struct pend *p = &s->p;
    memcpy(delta, p->delta, o->dim * sizeof(double));
    memcpy(s->mom, p->delta, o->dim * sizeof(double));
    s->has_mom = 1;
    double gamma = p->gammas[p->c];
    commit(o, lambda, gamma);
    return CURV_OK;
}

static curv_status resume_gram(curv_opt *o, const curv_response *resp, double *delta,
                               curv_request *req, curv_error *err)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    struct pend *p = &s->p;
    const size_t n = p->nc + (size_t)p->has_mom;
    const uint64_t k = o->t + 1;
    double damp[4] = {0}; /* n <= 3 γ candidates + momentum */
    for (size_t i = 0; i < n; i++) {
        const double *v = p->vec + i * o->dim;
        damp[i] = (p->lambda + h->weight_decay) * curv__dot(v, v, o->dim);
    }
    size_t bad = curv__kfac_gram_check(resp->values, n, damp);
    if (bad < n * n)
        return curv__fail(err, CURV_E_INVALID,
                          "kfac: the Gram matrix answering request %llu is not symmetric positive "
                          "semi-definite at [%zu][%zu] (%g vs %g)",
                          (unsigned long long)resp->seq, bad / n, bad % n, resp->values[bad],
                          resp->values[(bad % n) * n + bad / n]);
    const double omega1 = pow(h->lambda_decay, (double)h->lambda_interval);
    choose(o, resp->values);
    const int lm_step = k % (uint64_t)h->lambda_interval == 0;
    s->rho_pending = 0;
    if (p->rejected)
        return finish(o, delta, p->lambda / omega1);
    if (lm_step && p->m < 0 && h->rho_source == CURV__KFAC_RHO_REQUEST) {
        p->stage = 2;
        *req = (curv_request){.kind = CURV_REQ_LOSS,
                              .seq = s->seq++,
                              .n_vectors = 1,
                              .dim = o->dim,
                              .vectors = p->delta};
        return CURV_NEED_INPUT;
    }
    if (lm_step && p->m < 0) {
        s->rho_pending = 1;
        s->rho_h0 = p->h0;
        s->rho_m = p->m;
    }
    return finish(o, delta, p->lambda);
}

static curv_status resume_loss(curv_opt *o, const curv_response *resp, double *delta)
{
    const struct curv__kfac_hyper *h = hyp(o);
    struct kfac_state *s = o->impl;
    struct pend *p = &s->p;
    const size_t d = o->dim;
    /* ‖θ + δ‖² from the dot products kept at the step. */
    double th_delta =
        p->lr * (p->alpha * p->th_dot[p->c] + (p->has_mom ? p->mu * p->th_dot[p->nc] : 0.0));
    double h1 =
        resp->values[0] +
        0.5 * h->weight_decay * (p->th_sq + 2.0 * th_delta + curv__dot(p->delta, p->delta, d));
    p->rho = (h1 - p->h0) / p->m;
    if (h->reject_rise && !(h1 <= p->h0)) {
        /* Keep θ; δ0 = 0, so the next step starts without momentum. */
        memset(p->delta, 0, d * sizeof(double));
        p->rejected = 2;
    }
    double omega1 = pow(h->lambda_decay, (double)h->lambda_interval);
    return finish(o, delta, curv__kfac_lm(p->lambda, p->rho, omega1));
}

static curv_status kfac_resume(curv_opt *o, const curv_response *resp, double *delta,
                               curv_request *req, curv_error *err)
{
    struct kfac_state *s = o->impl;
    if (s->p.stage == 1)
        return resume_gram(o, resp, delta, req, err);
    return resume_loss(o, resp, delta);
}

static void kfac_save(const curv_opt *o, struct curv__writer *w)
{
    const struct kfac_state *s = o->impl;
    curv__w_u64(w, s->seq);
    curv__w_f64(w, s->lambda);
    curv__w_f64(w, s->gamma);
    curv__w_u64(w, s->failures);
    curv__w_u32(w, (uint32_t)s->has_mom);
    curv__w_part(w, curv__steps_stamp(o)); /* momentum: set when a step completes */
    curv__w_f64s(w, s->mom, o->dim);
    curv__w_volatile(w);
    curv__w_u32(w, (uint32_t)s->rho_pending);
    curv__w_f64(w, s->rho_h0);
    curv__w_f64(w, s->rho_m);
    curv__kfac_est_save(s->est, w, curv__steps_stamp(o));
}

static curv_status kfac_load(curv_opt *o, struct curv__reader *r, curv_error *err)
{
    struct kfac_state *s = o->impl;
    s->seq = curv__r_u64(r);
    s->lambda = curv__r_f64(r);
    s->gamma = curv__r_f64(r);
    s->failures = curv__r_u64(r);
    uint32_t has_mom = curv__r_u32(r);
    curv__r_f64s(r, s->mom, o->dim);
    uint32_t rho_pending = curv__r_u32(r);
    s->rho_h0 = curv__r_f64(r);
    s->rho_m = curv__r_f64(r);
    s->has_mom = has_mom == 1;
    s->rho_pending = rho_pending == 1;
    if (has_mom > 1 || rho_pending > 1 || !(s->lambda > 0) || !(s->gamma > 0) ||
        !isfinite(s->lambda) || !isfinite(s->gamma) || !isfinite(s->rho_h0) ||
        !isfinite(s->rho_m) || (s->rho_pending && !(s->rho_m < 0)) ||
        curv__first_nonfinite(s->mom, o->dim) < o->dim)
        r->bad = 1;
    return curv__kfac_est_load(s->est, r, o->t, err);
}

static size_t kfac_saved(const curv_opt *o)
{
    size_t total = o->dim, n = curv_layout_nblocks(o->layout);
    for (size_t i = 0; i < n; i++) {
        curv_block_info b;
        curv_layout_block(o->layout, i, &b);
        size_t x = curv__kblock_saved(&b, hyp(o));
        if (x > SIZE_MAX - total)
            return SIZE_MAX;
        total += x;
    }
    return total;
}

/* A state saved by an earlier version runs on with the behaviour it was
 * saved with: before "precision", float64; before "refresh", the
 * eigendecompositions it holds; before the noise term (no
 * "noise"), the batch's model (noise off); before "noise_momentum", the
 * noise bound on v itself; before the safeguards (no
 * "coefficients"), also the free solve, every step kept, no KL clip, the
 * γ grid, and in adaptive mode an lr of 1 (lr had no effect there; its
 * stored value was simple mode's 0.01). */
static curv_status kfac_upgrade(curv_config *c)
{
    struct curv__cfg_entry e;
    if (!curv__config_find(c, "precision", &e) &&
        curv_config_set_str(c, "precision", "fp64", NULL) != CURV_OK)
        return CURV_E_NOMEM;
    if (!curv__config_find(c, "noise", &e)) {
        curv_status st = curv_config_set_str(c, "noise", "off", NULL);
        if (st != CURV_OK)
            return st;
    }
    if (!curv__config_find(c, "noise_momentum", &e) &&
        curv_config_set_num(c, "noise_momentum", 0, NULL) != CURV_OK)
        return CURV_E_NOMEM;
    if (!curv__config_find(c, "refresh", &e) &&
        curv_config_set_str(c, "refresh", "eigen", NULL) != CURV_OK)
        return CURV_E_NOMEM;
    if (curv__config_find(c, "coefficients", &e))
        return CURV_OK;
    int simple = curv__config_find(c, "mode", &e) && e.str && strcmp(e.str, "simple") == 0;
    curv_status st = curv_config_set_str(c, "coefficients", "free", NULL);
    if (st == CURV_OK)
        st = curv_config_set_num(c, "reject_rise", 0, NULL);
    if (st == CURV_OK)
        st = curv_config_set_num(c, "kl_clip", 0, NULL);
    if (st == CURV_OK)
        st = curv_config_set_str(c, "gamma_rule", "grid", NULL);
    if (st == CURV_OK && !simple)
        st = curv_config_set_num(c, "lr", 1.0, NULL);
    return st;
}

curv_refresh *curv_opt_refresh(curv_opt *o)
{
    curv_opt_settle(o); /* the refresh a step deferred takes its snapshot at the fold */
    return o && o->kind == CURV_OPT_KFAC
               ? curv__kfac_est_pending(((struct kfac_state *)o->impl)->est)
               : NULL;
}

/* The fold a step left (curv_opt_settle); its tolerated failures count
 * with the next step's. */
static void kfac_settle(curv_opt *o)
{
    struct kfac_state *s = o->impl;
    s->failures += curv__kfac_est_settle(s->est);
}

curv_status curv_opt_defer_stats(curv_opt *o, int on, curv_error *err)
{
    if (!o)
        return curv__fail(err, CURV_E_INVALID, "defer_stats: the optimizer is NULL");
    curv_opt_settle(o);
    if (o->kind == CURV_OPT_KFAC)
        ((struct kfac_state *)o->impl)->defer_stats = on != 0;
    return CURV_OK;
}

int curv_opt_stats_pending(const curv_opt *o)
{
    return o && o->kind == CURV_OPT_KFAC &&
           curv__kfac_est_fold_pending(((const struct kfac_state *)o->impl)->est);
}

/* Float statistics feed fp32's float SYRKs as they are; fp64's SYRKs and
 * the tridiagonal inverse's cross factors read doubles. Both settings are
 * fixed for a session. */
static int kfac_float_layers(const curv_opt *o)
{
    const struct curv__kfac_hyper *h = hyp(o);
    return h->precision == CURV__KFAC_FP32 && h->inverse == CURV__KFAC_BLOCKDIAG;
}

const struct curv__kfac_est *curv__kfac_estimator(const curv_opt *o)
{
    return o && o->kind == CURV_OPT_KFAC ? ((const struct kfac_state *)o->impl)->est : NULL;
}

const struct curv__opt_vt curv__kfac_vt = {
    .params = PARAMS,
    .n_params = sizeof PARAMS / sizeof PARAMS[0],
    .hyper_size = sizeof(struct curv__kfac_hyper),
    .init = kfac_init,
    .fini = kfac_fini,
    .step = kfac_step,
    .resume = kfac_resume,
    .save = kfac_save,
    .load = kfac_load,
    .saved_doubles = kfac_saved,
    .fixed = (const char *const[]){"mode", "inverse", "max_factor_dim", "fallback", "precision",
                                   "max_staleness", "refresh", NULL},
    .inputs = CURV_INPUT_LAYERS,
    .upgrade = kfac_upgrade,
    .settle = kfac_settle,
    .float_layers = kfac_float_layers,
};
