/* SPDX-License-Identifier: MIT */
/*
 * What HF does with a finished CG run: CG-backtracking (thesis §4.6.7,
 * Martens 2010) picks among the stored iterates by the loss the trainer
 * reports for them; ρ and the Levenberg-Marquardt rule adapt λ (§4.6.5,
 * eq. 4.9); a backtracking line search (§4.6.8) scales the choice.
 */
#include <math.h>

#include "hf_int.h"

/*
 * The candidates are asked about from the last backwards, a batch at a
 * time (one request holds a whole batch, so with the default batch one
 * round trip covers every stored iterate). The thesis walks back "until
 * there will be no further possible improvement": once the loss rises
 * going backwards no earlier batch is asked for. Of the iterates asked
 * about, the one with the lowest loss is chosen (the later one on a tie).
 */
int curv__hf_backtrack_answer(struct hf_work *w, size_t d, const double *loss)
{
    size_t first = w->bt_end - w->bt_batch;
    int rose = 0;
    for (size_t j = w->bt_batch; j-- > 0;) {
        if (loss[j] < w->best_loss) {
            w->best = first + j;
            w->best_loss = loss[j];
        }
        rose |= loss[j] > w->earliest_loss;
        w->earliest_loss = loss[j];
    }
    w->bt_end = first;
    if (!rose && first > 0)
        return 0;
    const double *delta = w->snap + w->best * d;
    w->delta = delta;
    w->h_delta = w->best_loss;
    w->g_delta = curv__dot(w->g, delta, d);
    w->d_delta = curv__hf_wnorm2(w->dvec, delta, d);
    w->delta_norm = sqrt(curv__dot(delta, delta, d));
    /* q is the damped model M̂(δ) − h(θ); the undamped M drops ½λδᵀDδ. */
    w->model_damped = w->q[w->snap_it[w->best]];
    w->model = w->model_damped - 0.5 * w->lambda * w->d_delta;
    return 1;
}

/*
 * ρ = (h(θ + δ) − h(θ)) / (M(δ) − M(0)), the denominator undamped (eq. 4.9)
 * or damped (rho_model). When the model predicts no decrease ρ means
 * nothing (a warm-started CG cut short can end with q > 0, §4.8): ρ is
 * reported as 0 and λ kept. The rule's result is clamped to
 * [lambda_min, lambda_max] so that λ can neither underflow to 0, from
 * which no factor could raise it again, nor overflow.
 */
void curv__hf_levenberg_marquardt(const struct hf_hyper *h, struct hf_work *w)
{
    double denom = h->rho_model == HF_RHO_DAMPED ? w->model_damped : w->model;
    w->lambda_next = w->lambda;
    w->rho = 0;
    if (!(denom < 0))
        return;
    w->rho = (w->h_delta - w->h0) / denom;
    if (!h->adapt_lambda)
        return;
    double l = w->lambda;
    if (w->rho > h->lm_high)
        l *= h->lm_decrease;
    else if (w->rho < h->lm_low)
        l *= h->lm_increase;
    else
        return;
    if (l < h->lambda_min)
        l = h->lambda_min;
    if (l > h->lambda_max)
        l = h->lambda_max;
    w->lambda_next = l;
}

int curv__hf_armijo(const struct hf_hyper *h, const struct hf_work *w, double alpha, double h_alpha)
{
    return h_alpha <= w->h0 + h->ls_c * alpha * w->g_delta;
}

double curv__hf_alpha(const struct hf_hyper *h, size_t j)
{
    return pow(h->ls_beta, (double)j);
}

size_t curv__hf_per_request(const struct hf_hyper *h, int64_t batch, size_t d)
{
    size_t fit = (size_t)h->max_request_values / (d ? d : 1);
    if (fit < 1)
        fit = 1;
    return (size_t)batch < fit ? (size_t)batch : fit;
}

/* α = β, β², ... after α = 1 failed, ls_batch per request, ls_max in all. */
size_t curv__hf_linesearch_batch(const struct hf_hyper *h, struct hf_work *w, size_t d)
{
    size_t left = (size_t)h->ls_max - w->ls_tried, n = curv__hf_per_request(h, h->ls_batch, d);
    if (n > left)
        n = left;
    for (size_t j = 0; j < n; j++) {
        double a = curv__hf_alpha(h, w->ls_tried + j + 1), *v = w->ls + j * d;
        for (size_t i = 0; i < d; i++)
            v[i] = a * w->delta[i];
    }
    w->ls_n = n;
    return n;
}
