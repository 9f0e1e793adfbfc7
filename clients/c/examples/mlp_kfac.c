/* SPDX-License-Identifier: MIT */
/*
 * A 2-16-3 tanh MLP with a softmax output, trained on three interleaved
 * spirals with K-FAC (or HF) through curvd, in plain C:
 *
 *   mlp_kfac http://127.0.0.1:8080 [kfac|hf] [steps]
 *
 * The trainer keeps θ and the data. Each step it sends the mean gradient,
 * the loss and, for K-FAC, each layer's inputs and the signals of targets
 * sampled from the model (the true Fisher); it answers the daemon's
 * callbacks: Gram matrices vᵢᵀ F vⱼ (one R-operator pass per vector),
 * curvature products F v (R-op, then backprop), and losses at θ + v.
 * Exit status 0 when the loss fell below a third of its start.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curvc.h"

enum { IN = 2, HID = 16, OUT = 3, M = 300 };
enum { W1 = HID * (IN + 1), W2 = OUT * (HID + 1), DIM = W1 + W2 };

static double xs[M][IN];
static int ys[M];

/* θ: W1 [HID][IN+1] then W2 [OUT][HID+1], biases in the last column. */
struct net {
    double theta[DIM];
    double h[M][HID], p[M][OUT]; /* the forward pass at θ, kept for the callbacks */
};

static unsigned rng = 12345;
static double uniform(void)
{
    rng = rng * 1664525u + 1013904223u;
    return ((double)(rng >> 8) + 0.5) / (1 << 24);
}

static void spirals(void)
{
    for (int i = 0; i < M; i++) {
        int c = i % OUT;
        double r = (double)(i / OUT) / (M / OUT), t = 4.0 * r + 2.094 * c + 0.2 * uniform();
        xs[i][0] = r * sin(t);
        xs[i][1] = r * cos(t);
        ys[i] = c;
    }
}

/* Forward pass of example @i at parameters @w; writes h and p. */
static void forward(const double *w, int i, double *h, double *p)
{
    double z[OUT], zmax = -INFINITY, sum = 0;
    for (int j = 0; j < HID; j++) {
        double s = w[j * (IN + 1) + IN];
        for (int k = 0; k < IN; k++)
            s += w[j * (IN + 1) + k] * xs[i][k];
        h[j] = tanh(s);
    }
    for (int o = 0; o < OUT; o++) {
        z[o] = w[W1 + o * (HID + 1) + HID];
        for (int j = 0; j < HID; j++)
            z[o] += w[W1 + o * (HID + 1) + j] * h[j];
        zmax = z[o] > zmax ? z[o] : zmax;
    }
    for (int o = 0; o < OUT; o++)
        sum += (p[o] = exp(z[o] - zmax));
    for (int o = 0; o < OUT; o++)
        p[o] /= sum;
}

static double mean_loss(const double *w)
{
    double h[HID], p[OUT], loss = 0;
    for (int i = 0; i < M; i++) {
        forward(w, i, h, p);
        loss -= log(p[ys[i]]) / M;
    }
    return loss;
}

/* Backprop of output signal @dz for example @i: adds dz h̄ᵀ and ds x̄ᵀ
 * times @scale into @g (flat θ layout) and returns the hidden signal. */
static void backward(const struct net *n, int i, const double *dz, double scale, double *g,
                     double *ds)
{
    const double *w = n->theta;
    for (int j = 0; j < HID; j++) {
        double dh = 0;
        for (int o = 0; o < OUT; o++)
            dh += w[W1 + o * (HID + 1) + j] * dz[o];
        ds[j] = dh * (1 - n->h[i][j] * n->h[i][j]);
    }
    if (!g)
        return;
    for (int o = 0; o < OUT; o++) {
        for (int j = 0; j < HID; j++)
            g[W1 + o * (HID + 1) + j] += scale * dz[o] * n->h[i][j];
        g[W1 + o * (HID + 1) + HID] += scale * dz[o];
    }
    for (int j = 0; j < HID; j++) {
        for (int k = 0; k < IN; k++)
            g[j * (IN + 1) + k] += scale * ds[j] * xs[i][k];
        g[j * (IN + 1) + IN] += scale * ds[j];
    }
}

/* The R-operator (Martens' thesis Alg. 5, forward half): Rz = J v for
 * example @i. */
static void jvp(const struct net *n, int i, const double *v, double *rz)
{
    double rh[HID];
    for (int j = 0; j < HID; j++) {
        double rs = v[j * (IN + 1) + IN];
        for (int k = 0; k < IN; k++)
            rs += v[j * (IN + 1) + k] * xs[i][k];
        rh[j] = rs * (1 - n->h[i][j] * n->h[i][j]);
    }
    for (int o = 0; o < OUT; o++) {
        rz[o] = v[W1 + o * (HID + 1) + HID];
        for (int j = 0; j < HID; j++)
            rz[o] +=
                v[W1 + o * (HID + 1) + j] * n->h[i][j] + n->theta[W1 + o * (HID + 1) + j] * rh[j];
    }
}

/* H_L u for softmax cross-entropy: diag(p) u − p (pᵀu). */
static void hess(const double *p, const double *u, double *out)
{
    double pu = 0;
    for (int o = 0; o < OUT; o++)
        pu += p[o] * u[o];
    for (int o = 0; o < OUT; o++)
        out[o] = p[o] * u[o] - p[o] * pu;
}

static int oracle(void *user, const curvc_request *req, double *answer)
{
    struct net *n = user;
    size_t k = req->n_vectors;
    if (req->kind == CURVC_REQ_LOSS) {
        for (size_t a = 0; a < k; a++) {
            double w[DIM];
            for (int d = 0; d < DIM; d++)
                w[d] = n->theta[d] + req->vectors[a * DIM + d];
            answer[a] = mean_loss(w);
        }
        return 0;
    }
    memset(answer, 0, req->n_values * sizeof *answer);
    double(*rz)[OUT] = malloc(k * sizeof *rz);
    if (!rz)
        return -1;
    for (int i = 0; i < M; i++) {
        for (size_t a = 0; a < k; a++)
            jvp(n, i, req->vectors + a * DIM, rz[a]);
        for (size_t a = 0; a < k; a++) {
            double hz[OUT], ds[HID];
            hess(n->p[i], rz[a], hz);
            if (req->kind == CURVC_REQ_CURVATURE_PRODUCT) /* Jᵀ H J v, averaged */
                backward(n, i, hz, 1.0 / M, answer + a * DIM, ds);
            else
                for (size_t b = 0; b < k; b++)
                    for (int o = 0; o < OUT; o++)
                        answer[b * k + a] += rz[b][o] * hz[o] / M;
        }
    }
    free(rz);
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
    const char *kind = argc > 2 ? argv[2] : "kfac";
    int steps = argc > 3 ? atoi(argv[3]) : 40;
    static struct net n;
    static double acts[2][M * HID], sig[2][M * HID];
    spirals();
    for (int d = 0; d < DIM; d++)
        n.theta[d] = 0.5 * (uniform() - 0.5);

    curvc_error err;
    curvc_client *c = curvc_client_new(url, getenv("CURVD_TOKEN"));
    const curvc_block layout[] = {{"hidden", "dense", {HID, IN}, 1},
                                  {"out", "dense", {OUT, HID}, 1}};
    curvc_session *s = NULL;
    /* λ_init = 150 (the thesis) suits long runs on big nets; this one is tiny. */
    const char *config = strcmp(kind, "kfac") == 0 ? "{\"lambda_init\": 0.01}"
                         : strcmp(kind, "hf") == 0 ? "{\"precond\": \"none\"}"
                                                   : NULL;
    if (!c || curvc_session_create(c, kind, layout, 2, config, &s, &err) != CURVC_OK) {
        fprintf(stderr, "mlp_kfac: create: %s\n", c ? err.text : "out of memory");
        curvc_client_free(c);
        return 1;
    }
    double first = mean_loss(n.theta), loss = first;
    for (int t = 0; t < steps; t++) {
        double g[DIM] = {0}, update[DIM];
        loss = 0;
        for (int i = 0; i < M; i++) {
            double dz[OUT], ds[HID], dzs[OUT], dss[HID];
            forward(n.theta, i, n.h[i], n.p[i]);
            loss -= log(n.p[i][ys[i]]) / M;
            for (int o = 0; o < OUT; o++) /* true targets: the gradient */
                dz[o] = n.p[i][o] - (o == ys[i]);
            backward(&n, i, dz, 1.0 / M, g, ds);
            double u = uniform(), cum = 0; /* a target sampled from the model: the Fisher */
            int yhat = OUT - 1;
            for (int o = 0; o < OUT; o++)
                if (u < (cum += n.p[i][o])) {
                    yhat = o;
                    break;
                }
            for (int o = 0; o < OUT; o++)
                dzs[o] = n.p[i][o] - (o == yhat);
            backward(&n, i, dzs, 0, NULL, dss);
            memcpy(&acts[0][i * IN], xs[i], sizeof xs[i]); /* without the bias 1 */
            memcpy(&sig[0][i * HID], dss, sizeof dss);     /* each example's own loss */
            memcpy(&acts[1][i * HID], n.h[i], sizeof n.h[i]);
            memcpy(&sig[1][i * OUT], dzs, sizeof dzs);
        }
        curvc_layer layers[] = {{"hidden", M, M, acts[0], sig[0]}, {"out", M, M, acts[1], sig[1]}};
        curvc_step_in in = {.grad = g, .loss = loss, .has_loss = 1, .batch = M};
        if (strcmp(kind, "kfac") == 0) { /* θ too: K-FAC's weight decay reads it */
            in.layers = layers;
            in.n_layers = 2;
            in.params = n.theta;
        }
        if (curvc_step(s, &in, CURVC_BINARY, oracle, &n, update, &err) != CURVC_OK) {
            fprintf(stderr, "mlp_kfac: step %d: %s\n", t + 1, err.text);
            break;
        }
        for (int d = 0; d < DIM; d++)
            n.theta[d] += update[d];
        if (t % 10 == 0)
            printf("step %3d  loss %.4f  %s\n", t + 1, loss, curvc_session_report(s));
    }
    loss = mean_loss(n.theta);
    printf("%s: loss %.4f -> %.4f after %llu steps (%lu requests)\n", kind, first, loss,
           (unsigned long long)curvc_session_steps(s), curvc_client_requests(c));
    int ok = curvc_session_steps(s) == (uint64_t)steps && loss < first / 3;
    curvc_session_delete(s, NULL);
    curvc_session_free(s);
    curvc_client_free(c);
    return ok ? 0 : 1;
}
