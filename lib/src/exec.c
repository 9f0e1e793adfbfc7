/* SPDX-License-Identifier: MIT */
/* The caller's executor (curv/exec.h): validation and the serial default. */
#include "exec_int.h"
#include "kfac_int.h"

void curv__exec_run(const curv_executor *ex, size_t n, curv_task_fn fn, void *arg)
{
    if (ex && ex->workers > 1 && n > 1) {
        ex->run(ex->ctx, n, fn, arg);
        return;
    }
    for (size_t i = 0; i < n; i++)
        fn(arg, i, 0);
}

curv_status curv_opt_set_executor(curv_opt *o, const curv_executor *ex, curv_error *err)
{
    if (!o)
        return curv__fail(err, CURV_E_INVALID, "set_executor: the optimizer is NULL");
    if (ex && (ex->workers == 0 || !ex->run))
        return curv__fail(err, CURV_E_INVALID, "set_executor: the executor has %s",
                          ex->run ? "zero workers" : "no run function");
    /* Only K-FAC has per-layer work to share out; the estimator is the
     * optimizer's own, so the const of the introspection accessor does not
     * apply here. */
    curv_opt_settle(o); /* the fold runs on the executor it was stepped with */
    struct curv__kfac_est *e = (struct curv__kfac_est *)curv__kfac_estimator(o);
    return e ? curv__kfac_est_set_executor(e, ex, err) : CURV_OK;
}
