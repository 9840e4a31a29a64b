/* test_trainer_schedule.c: the learning-rate schedules against their closed forms (evaluated
   here independently, including the reference's LambdaLR) and log.csv truncation on resume. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/fileio.h"
#include "train/distill_loss.h"
#include "train/run_log.h"
#include "train/schedule.h"

static void test_linear_is_the_reference_lambda(void **state) {
    const int64_t total = 160 * 100;
    for (int64_t s = 0; s <= total + 5; s += 37) {
        // EfficientDM reference: LambdaLR(lambda s: max(0.0, float(total - s) / float(max(1, total))))
        double ref = (double)(total - s) / (double)total;
        if (ref < 0) ref = 0;
        assert_true(lr_schedule_factor(RC_SCHED_LINEAR, 0, total, s) == ref);
    }
    assert_true(lr_schedule_factor(RC_SCHED_LINEAR, 0, total, 0) == 1.0);
    assert_true(lr_schedule_factor(RC_SCHED_LINEAR, 0, total, total) == 0.0);
}

static void test_warmup_and_other_schedules(void **state) {
    const int64_t total = 1000, warm = 100;
    for (int64_t s = 0; s < warm; s++) {
        double ref = (double)s / 100.0;
        assert_true(lr_schedule_factor(RC_SCHED_LINEAR, warm, total, s) == ref);
        assert_true(lr_schedule_factor(RC_SCHED_COSINE, warm, total, s) == ref);
        assert_true(lr_schedule_factor(RC_SCHED_CONSTANT, warm, total, s) == ref);
    }
    // after warm-up: linear falls from 1 at s = warm to 0 at s = total
    assert_true(lr_schedule_factor(RC_SCHED_LINEAR, warm, total, warm) == 1.0);
    assert_true(fabs(lr_schedule_factor(RC_SCHED_LINEAR, warm, total, 550) - 0.5) < 1e-15);
    assert_true(lr_schedule_factor(RC_SCHED_LINEAR, warm, total, total) == 0.0);
    // cosine: 1 at the start, 1/2 half-way, (1 + cos(pi/4))/2 at a quarter, 0 at the end and after
    assert_true(lr_schedule_factor(RC_SCHED_COSINE, warm, total, warm) == 1.0);
    assert_true(fabs(lr_schedule_factor(RC_SCHED_COSINE, warm, total, 550) - 0.5) < 1e-15);
    assert_true(fabs(lr_schedule_factor(RC_SCHED_COSINE, warm, total, 325) - (1 + sqrt(0.5)) / 2) < 1e-15);
    assert_true(lr_schedule_factor(RC_SCHED_COSINE, warm, total, total) < 1e-15);
    assert_true(lr_schedule_factor(RC_SCHED_COSINE, warm, total, total + 300) < 1e-15);
    assert_true(lr_schedule_factor(RC_SCHED_CONSTANT, 0, total, 0) == 1.0);
    assert_true(lr_schedule_factor(RC_SCHED_CONSTANT, warm, total, total) == 1.0);
}


// distill_ddim_weight against finite differences of ddim_update itself: moving ε by h at
// position i moves x_prev by c h; the weight is c² over the mean c².
static void test_ddim_weight_is_the_update_sensitivity(void **state) {
    (void)state;
    enum { T = 1000 };
    static float ac[T];
    double a = 1.0;
    for (int i = 0; i < T; i++) {  // the linear-in-sqrt beta schedule of the shipped teacher
        double sb = sqrt(0.0015) + (sqrt(0.0195) - sqrt(0.0015)) * i / (T - 1);
        a *= 1.0 - sb * sb;
        ac[i] = (float)a;
    }
    const double etas[2] = {0.0, 1.0};
    for (int k = 0; k < 2; k++) {
        DdimSchedule s = {0};
        Err e = {0};
        assert_int_equal(ddim_schedule_init(&s, ac, T, 10, etas[k], &e), 0);
        double c2[16], sum = 0;
        for (int i = 0; i < s.n; i++) {
            float x = 0.3f, e0 = -0.2f, h = 1e-2f, e1 = e0 + h, noise = 0.5f, y0, y1;
            ddim_update(&s, i, &x, &e0, s.sigmas[i] != 0 ? &noise : NULL, &y0, NULL, 1);
            ddim_update(&s, i, &x, &e1, s.sigmas[i] != 0 ? &noise : NULL, &y1, NULL, 1);
            double c = ((double)y1 - y0) / h;
            c2[i] = c * c;
            sum += c2[i];
        }
        for (int i = 0; i < s.n; i++) {
            double want = c2[i] * s.n / sum, got = distill_ddim_weight(&s, i);
            assert_true(fabs(got - want) <= 2e-3 * want + 1e-6);
        }
        // at eta 0 the noisiest step weighs most, the last (t = 1) least
        if (etas[k] == 0.0) {
            assert_true(distill_ddim_weight(&s, s.n - 1) > 2.0);
            assert_true(distill_ddim_weight(&s, 0) < 0.01);
        }
        ddim_schedule_free(&s);
    }
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

// The file at path holds exactly want.
static void assert_file_text(const char *path, const char *want) {
    char *text = test_slurp(path);
    assert_non_null(text);
    assert_string_equal(text, want);
    free(text);
}

static void test_log_truncates_to_checkpoint(void **state) {
    char dir[] = "/tmp/effdm_test_log_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    Err e = {0};
    RunLog l;
    // a fresh log: header, then rows
    assert_int_equal(run_log_open(&l, path, 0, 0, &e), 0);
    for (int ep = 0; ep < 2; ep++) {
        for (int s = 0; s < 3; s++) assert_int_equal(run_log_step(&l, ep, s, 1.5f + s, 1e-3, 0.25, &e), 0);
        assert_int_equal(run_log_val(&l, ep, 3, 0.125, NAN, NAN, NAN, 1.0, &e), 0);
    }
    assert_int_equal(run_log_close(&l, &e), 0);
    char *full = test_slurp(path);
    assert_non_null(full);
    assert_true(strncmp(full, RUN_LOG_HEADER "\n0,0,1.5,0.001,0.250,\n", strlen(RUN_LOG_HEADER) + 22) == 0);

    // checkpoint (1, 1): keep epoch 0 (3 steps + validation) and step (1, 0)
    assert_int_equal(run_log_open(&l, path, 1, 1, &e), 0);
    assert_int_equal(run_log_close(&l, &e), 0);
    assert_file_text(path, RUN_LOG_HEADER "\n0,0,1.5,0.001,0.250,\n0,1,2.5,0.001,0.250,\n0,2,3.5,0.001,0.250,\n"
                           "0,3,,,1.000,0.125,,,\n1,0,1.5,0.001,0.250,\n");

    // checkpoint (0, 3): the epoch-end work (validation) of epoch 0 is still pending: its row goes
    write_text(path, full);
    assert_int_equal(run_log_open(&l, path, 0, 3, &e), 0);
    assert_int_equal(run_log_step(&l, 0, 3, 9.0f, 0, 0, &e), 0);
    assert_int_equal(run_log_close(&l, &e), 0);
    assert_file_text(path, RUN_LOG_HEADER "\n0,0,1.5,0.001,0.250,\n0,1,2.5,0.001,0.250,\n0,2,3.5,0.001,0.250,\n"
                           "0,3,9,0,0.000,\n");

    // a torn last line (killed mid-write) is dropped
    write_text(path, RUN_LOG_HEADER "\n0,0,1.5,0.001,0.250,\n0,1,2.");
    assert_int_equal(run_log_open(&l, path, 5, 0, &e), 0);
    assert_int_equal(run_log_close(&l, &e), 0);
    assert_file_text(path, RUN_LOG_HEADER "\n0,0,1.5,0.001,0.250,\n");

    // the sampled validation's columns
    assert_int_equal(run_log_open(&l, path, 9, 0, &e), 0);
    assert_int_equal(run_log_val(&l, 2, 3, 0.5, 0.25, 1.5, 1.25, 2.0, &e), 0);
    assert_int_equal(run_log_close(&l, &e), 0);
    assert_file_text(path, RUN_LOG_HEADER "\n0,0,1.5,0.001,0.250,\n2,3,,,2.000,0.5,0.25,1.5,1.25\n");

    // a log written before those columns: its rows are kept, its header renewed
    write_text(path, RUN_LOG_HEADER_V1 "\n0,0,1.5,0.001,0.250,\n0,3,,,1.000,0.125\n");
    assert_int_equal(run_log_open(&l, path, 5, 0, &e), 0);
    assert_int_equal(run_log_close(&l, &e), 0);
    assert_file_text(path, RUN_LOG_HEADER "\n0,0,1.5,0.001,0.250,\n0,3,,,1.000,0.125\n");

    // not a log
    write_text(path, "hello\n");
    assert_int_equal(run_log_open(&l, path, 0, 0, &e), ERR_FORMAT);
    assert_non_null(strstr(e.msg, "log.csv"));
    free(full);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_is_the_reference_lambda),
        cmocka_unit_test(test_warmup_and_other_schedules),
        cmocka_unit_test(test_log_truncates_to_checkpoint),
        cmocka_unit_test(test_ddim_weight_is_the_update_sensitivity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
