/* test_resume.c: exact resume. A run interrupted after k optimizer steps and resumed from its
   run directory must give BIT-identical losses, final trainable tensors, optimizer moments,
   best state and log to the same run uninterrupted (same seed, same thread count):
   - in process: a stop raised after step k (mid-epoch, and at an epoch's end with its
     validation, sample grid and checkpoint still pending), a fresh Trainer resumes from disk;
   - effdm finetune as a child process: SIGINT mid-run (exit 130, saved mid-epoch) and
     SIGKILL mid-run (the last checkpoint), then `effdm finetune --resume`; every file of the
     run directory must open after the kill.
   The run: 2 epochs of 4 steps on the shipped teacher with the effdm recipe's loss (both
   branches, equalized steps, best_val) at eta 1 (noise drawn every step), validation every
   epoch, a small sample grid every epoch. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "autograd/ops/gemm_util.h"
#include "io/fileio.h"
#include "io/weights.h"
#include "test_trainer_fixture.h"
#include "run/run_train.h"
#include "train/run_log.h"
#include "util/threads.h"

#define MAX_STEPS 64

typedef struct {
    volatile sig_atomic_t stop;
    int64_t stop_at;
    float losses[MAX_STEPS];
    int n;
} Rec;

static void rec_step(const TrainerStep *s, void *user) {
    Rec *r = user;
    if (r->n < MAX_STEPS) r->losses[r->n++] = s->loss;
    if (r->stop_at && s->global_step == r->stop_at) r->stop = 1;
}

static char base_dir[64];  // the calibrated run directory every case copies
static char ref_dir[64];   // the uninterrupted run
static Rec ref_rec;
static RunConfig base_rc;

static void config_for(RunConfig *rc, const char *dir) {
    fix_config(rc, RC_RECIPE_EFFDM, dir);
    rc->train.eta = 1.0;
    rc->train.sample_every = 1;
    rc->sample.steps = 2;
    rc->sample.grid_rows = 1;
    rc->sample.grid_cols = 2;
}

// Opens dir (as copied from base_dir) and runs it until the end or the stop. Returns the code.
static int run_dir(const char *dir, Rec *rec) {
    TrainerHooks h = {.on_step = rec_step, .user = rec, .stop = &rec->stop};
    return fix_run_dir(&base_rc, dir, &h);
}

static int setup(void **state) {
    threads_set(2);
    snprintf(base_dir, sizeof base_dir, "/tmp/effdm_test_resume_base_XXXXXX");
    snprintf(ref_dir, sizeof ref_dir, "/tmp/effdm_test_resume_ref_XXXXXX");
    if (!mkdtemp(base_dir) || !mkdtemp(ref_dir)) return -1;
    config_for(&base_rc, base_dir);
    Err e = {0};
    if (fix_calibrate(&base_rc, &e)) {
        fprintf(stderr, "calibration: %s\n", e.msg);
        return -1;
    }
    if (fix_copy_run(base_dir, ref_dir)) return -1;
    memset(&ref_rec, 0, sizeof ref_rec);
    if (run_dir(ref_dir, &ref_rec) != 0) return -1;
    return ref_rec.n == 8 ? 0 : -1;
}

static int teardown(void **state) {
    fix_remove_run(base_dir);
    fix_remove_run(ref_dir);
    return 0;
}

// Every tensor of a's file is in b's with the same dtype, shape and bytes (but `skip`).
static void assert_same_tensors(const char *a_path, const char *b_path, const char *skip) {
    Err e = {0};
    WeightFile *a, *b;
    if (weights_open(&a, a_path, &e)) fail_msg("%s", e.msg);
    if (weights_open(&b, b_path, &e)) fail_msg("%s", e.msg);
    assert_int_equal(weights_count(a), weights_count(b));
    for (int i = 0; i < weights_count(a); i++) {
        const WeightInfo *wa = weights_info(a, i), *wb = weights_find(b, wa->name);
        if (!wb) fail_msg("%s: tensor %s missing", b_path, wa->name);
        if (skip && !strcmp(wa->name, skip)) continue;
        assert_int_equal(wa->dtype, wb->dtype);
        assert_int_equal(wa->numel, wb->numel);
        size_t bytes = wa->numel * (wa->dtype == DT_F32 ? 4 : wa->dtype == DT_U8 ? 1 : wa->dtype == DT_I32 ? 4 : 8);
        unsigned char *da = malloc(bytes ? bytes : 1), *db = malloc(bytes ? bytes : 1);
        assert_int_equal(weights_read_raw(a, wa->name, da, bytes, &e), 0);
        assert_int_equal(weights_read_raw(b, wb->name, db, bytes, &e), 0);
        if (memcmp(da, db, bytes)) fail_msg("%s differs between %s and %s", wa->name, a_path, b_path);
        free(da);
        free(db);
    }
    weights_close(a);
    weights_close(b);
}

// The two files hold the same bytes: a run state holds only what the computation
// determines (wall times and thread counts go to state.json), so an interrupted and resumed
// run writes the file an uninterrupted one does.
static void assert_same_bytes(const char *a_path, const char *b_path) {
    Err e = {0};
    unsigned char *a, *b;
    size_t na, nb;
    if (file_read_all(a_path, &a, &na, &e) || file_read_all(b_path, &b, &nb, &e)) fail_msg("%s", e.msg);
    if (na != nb || memcmp(a, b, na)) fail_msg("%s and %s differ (%zu and %zu bytes)", a_path, b_path, na, nb);
    free(a);
    free(b);
}

static void assert_same_bytes_in(const char *a_dir, const char *b_dir, const char *name) {
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/%s", a_dir, name);
    snprintf(b, sizeof b, "%s/%s", b_dir, name);
    assert_same_bytes(a, b);
}

// log.csv without its seconds column (wall times differ): every other field identical.
static char *log_without_seconds(const char *dir) {
    char path[2048];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    unsigned char *buf;
    size_t n;
    Err e = {0};
    if (file_read_all(path, &buf, &n, &e)) fail_msg("%s", e.msg);
    char *out = malloc(n + 1);
    size_t k = 0;
    int field = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = (char)buf[i];
        if (ch == '\n') field = 0;
        else if (ch == ',') field++;
        if (field == 4 && ch != ',') continue;  // the seconds column
        out[k++] = ch;
    }
    out[k] = 0;
    free(buf);
    return out;
}

static void assert_same_run(const char *dir, const Rec *rec) {
    assert_int_equal(rec->n, ref_rec.n);
    for (int i = 0; i < rec->n; i++)
        if (memcmp(&rec->losses[i], &ref_rec.losses[i], sizeof(float)))
            fail_msg("step %d: loss %.9g resumed, %.9g uninterrupted", i, (double)rec->losses[i],
                     (double)ref_rec.losses[i]);
    char a[2048], b[2048];
    snprintf(a, sizeof a, "%s/state.safetensors", ref_dir);
    snprintf(b, sizeof b, "%s/state.safetensors", dir);
    assert_same_bytes(a, b);
    snprintf(a, sizeof a, "%s/best.safetensors", ref_dir);
    snprintf(b, sizeof b, "%s/best.safetensors", dir);
    assert_same_tensors(a, b, NULL);
    char *la = log_without_seconds(ref_dir), *lb = log_without_seconds(dir);
    assert_string_equal(la, lb);
    free(la);
    free(lb);
    snprintf(a, sizeof a, "%s/samples/epoch_002.png", ref_dir);
    snprintf(b, sizeof b, "%s/samples/epoch_002.png", dir);
    unsigned char *pa, *pb;
    size_t na, nb;
    Err e = {0};
    assert_int_equal(file_read_all(a, &pa, &na, &e), 0);
    assert_int_equal(file_read_all(b, &pb, &nb, &e), 0);
    assert_true(na == nb && !memcmp(pa, pb, na));
    free(pa);
    free(pb);
}

// state.json names the FP32 GEMM kernel the run computed with (finetune --resume compares it
// with the current one and says when the bits cannot be kept).
static void assert_state_json_kernel(const char *dir) {
    char path[256], want[64];
    snprintf(path, sizeof path, "%s/state.json", dir);
    snprintf(want, sizeof want, "\"fp_gemm\": \"%s\"", gemm_kernel_name(gemm_kernel_get()));
    unsigned char *buf;
    size_t n;
    Err e = {0};
    if (file_read_all(path, &buf, &n, &e)) fail_msg("%s", e.msg);
    char *txt = malloc(n + 1);
    memcpy(txt, buf, n);
    txt[n] = 0;
    if (!strstr(txt, want)) fail_msg("%s: no %s in %s", path, want, txt);
    free(txt);
    free(buf);
}

static void resume_after(int64_t k) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/effdm_test_resume_k_XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(fix_copy_run(base_dir, dir), 0);
    Rec rec = {.stop_at = k};
    assert_int_equal(run_dir(dir, &rec), ERR_INTERRUPTED);
    assert_int_equal(rec.n, (int)k);
    assert_state_json_kernel(dir);
    rec.stop_at = 0;
    rec.stop = 0;
    // a new Trainer, from the files alone, on another thread count (the reference ran 2)
    threads_set(1);
    assert_int_equal(run_dir(dir, &rec), 0);
    threads_set(2);
    assert_same_run(dir, &rec);
    fix_remove_run(dir);
}

static void test_resume_mid_epoch(void **state) { resume_after(3); }

// effdm export to a folder that does not exist fails at once, naming the user's --out (it
// used to load, fit the guidance gain for minutes, then fail on "x.safetensors.tmp").
static void test_export_checks_out_first(void **state) {
    char cmd[1024], err[128], buf[2048] = "";
    snprintf(err, sizeof err, "%s/export_err.txt", base_dir);
    snprintf(cmd, sizeof cmd, "'%s' export --run '%s' --out /nonexistent/effdm/x.safetensors 2>'%s'", EFFDM_BIN,
             base_dir, err);
    int st = system(cmd);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    FILE *f = fopen(err, "r");
    assert_non_null(f);
    buf[fread(buf, 1, sizeof buf - 1, f)] = 0;
    fclose(f);
    unlink(err);
    if (!strstr(buf, "--out /nonexistent/effdm/x.safetensors: cannot create")) fail_msg("stderr: %s", buf);
}

// effdm calibrate --force whose state write fails (a folder where its temporary file goes):
// the run directory keeps its calib and state as they were. It used to unlink the calib it
// had just written over the old one, leaving a state without its calib.
static void test_failed_force_calibration_keeps_dir(void **state) {
    char dir[64], blocker[128], blocker2[128];
    snprintf(dir, sizeof dir, "/tmp/effdm_test_resume_force_XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(fix_copy_run(base_dir, dir), 0);
    snprintf(blocker, sizeof blocker, "%s/state.safetensors.new.tmp", dir);
    snprintf(blocker2, sizeof blocker2, "%s/state.safetensors.tmp", dir);  // where it wrote before
    assert_int_equal(mkdir(blocker, 0777), 0);
    assert_int_equal(mkdir(blocker2, 0777), 0);
    RunConfig rc = base_rc;
    snprintf(rc.run.out, sizeof rc.run.out, "%s", dir);
    rc.calib.seed = 99;  // another calibration than the one in the directory
    CalibOpts o = {.force = 1};
    Err e = {0};
    assert_int_not_equal(run_calibrate(&rc, &o, NULL, &e), 0);
    rmdir(blocker);
    rmdir(blocker2);
    assert_same_bytes_in(base_dir, dir, "calib.safetensors");
    assert_same_bytes_in(base_dir, dir, "state.safetensors");
    fix_remove_run(dir);
}

// Flips one byte in the data of dir/name.
static void corrupt(const char *dir, const char *name) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, -100, SEEK_END);
    int c = fgetc(f);
    fseek(f, -100, SEEK_END);
    fputc(c ^ 0x5a, f);
    assert_int_equal(fclose(f), 0);
}

// A corrupted state.safetensors (a bad sector, a torn copy): the checksum catches it, the run
// resumes from state.prev.safetensors with a note and ends in the uninterrupted bytes.
// Without a previous state the error names the checksum. (It used to fail on "opt.v" with
// no way out, or worse, load flipped bits.)
static void test_corrupt_state_falls_back(void **state) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/effdm_test_resume_bad_XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(fix_copy_run(base_dir, dir), 0);
    Rec rec = {.stop_at = 5};  // epoch 1, step 1: the epoch-0 checkpoint is state.prev
    assert_int_equal(run_dir(dir, &rec), ERR_INTERRUPTED);
    char prev[128];
    snprintf(prev, sizeof prev, "%s/state.prev.safetensors", dir);
    assert_int_equal(access(prev, F_OK), 0);
    corrupt(dir, "state.safetensors");
    RunConfig rc = base_rc;
    snprintf(rc.run.out, sizeof rc.run.out, "%s", dir);
    Err e = {0};
    Trainer *tr;
    if (run_trainer_open(&tr, &rc, dir, &e)) fail_msg("open %s: %s", dir, e.msg);
    const char *note = trainer_open_note(tr);
    if (!note || !strstr(note, "checksum") || !strstr(note, "state.prev.safetensors")) fail_msg("note: %s", note);
    int ep, st;
    trainer_position(tr, &ep, &st);
    assert_int_equal(ep, 1);
    assert_int_equal(st, 0);
    rec.stop = 0;
    TrainerHooks h = {.stop = &rec.stop};
    assert_int_equal(trainer_run(tr, &h, NULL, &e), 0);
    trainer_free(tr);
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/state.safetensors", ref_dir);
    snprintf(b, sizeof b, "%s/state.safetensors", dir);
    assert_same_bytes(a, b);
    // no previous state: the error names the file and the checksum
    assert_int_equal(unlink(prev), 0);
    corrupt(dir, "state.safetensors");
    assert_int_not_equal(run_trainer_open(&tr, &rc, dir, &e), 0);
    if (!strstr(e.msg, "checksum") || !strstr(e.msg, "state.safetensors")) fail_msg("error: %s", e.msg);
    fix_remove_run(dir);
}
static void test_resume_at_epoch_end(void **state) { resume_after(4); }

/* ---- effdm finetune as a child process ----------------------------------------------- */

static pid_t spawn_finetune(const char *dir) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 2);
        execl(EFFDM_BIN, EFFDM_BIN, "finetune", "--resume", dir, "--threads", "2", (char *)NULL);
        _exit(127);
    }
    return pid;
}

// Waits until dir/log.csv holds a row starting with `prefix` (or the child exits). 1 if seen.
static int wait_for_row(const char *dir, const char *prefix, pid_t pid) {
    char path[2048];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    for (int i = 0; i < 120000; i++) {
        FILE *f = fopen(path, "r");
        if (f) {
            char line[256];
            int seen = 0;
            while (fgets(line, sizeof line, f))
                if (!strncmp(line, prefix, strlen(prefix))) seen = 1;
            fclose(f);
            if (seen) return 1;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) return 0;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int wait_exit(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) return 1000 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

// Every file of the run directory opens as what it is.
static void assert_dir_intact(const char *dir) {
    char path[2048];
    Err e = {0};
    RunConfig rc;
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    if (run_config_load(path, &rc, &e)) fail_msg("%s", e.msg);
    static const char *const st[] = {"state.safetensors", "calib.safetensors", "best.safetensors"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, st[i]);
        if (i == 2 && access(path, F_OK) != 0) continue;
        WeightFile *f;
        if (weights_open(&f, path, &e)) fail_msg("%s", e.msg);
        weights_close(f);
    }
    snprintf(path, sizeof path, "%s/log.csv", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[128];
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, RUN_LOG_HEADER "\n");
    fclose(f);
}

// Losses of log.csv's step rows (validation rows skipped).
static int log_losses(const char *dir, float *out, int cap) {
    char path[2048];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[256];
    int n = 0;
    assert_non_null(fgets(line, sizeof line, f));
    while (fgets(line, sizeof line, f) && n < cap) {
        int ep, st;
        float loss;
        if (sscanf(line, "%d,%d,%f,", &ep, &st, &loss) == 3) out[n++] = loss;
    }
    fclose(f);
    return n;
}

static void child_case_n(int sig, int count, const char *kill_after_row, int want_status) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/effdm_test_resume_sig_XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(fix_copy_run(base_dir, dir), 0);
    pid_t pid = spawn_finetune(dir);
    assert_true(pid > 0);
    if (!wait_for_row(dir, kill_after_row, pid)) fail_msg("the child finished before row %s", kill_after_row);
    for (int i = 0; i < count; i++) kill(pid, sig);
    assert_int_equal(wait_exit(pid), want_status);
    assert_dir_intact(dir);
    pid = spawn_finetune(dir);
    assert_int_equal(wait_exit(pid), 0);
    assert_dir_intact(dir);
    // the whole run's losses (log.csv: each printed exactly) and final state equal the reference
    float losses[MAX_STEPS];
    int n = log_losses(dir, losses, MAX_STEPS);
    assert_int_equal(n, ref_rec.n);
    for (int i = 0; i < n; i++) {
        char a[32], b[32];
        snprintf(a, sizeof a, "%.9g", (double)losses[i]);
        snprintf(b, sizeof b, "%.9g", (double)ref_rec.losses[i]);
        assert_string_equal(a, b);
    }
    char a[2048], b[2048];
    snprintf(a, sizeof a, "%s/state.safetensors", ref_dir);
    snprintf(b, sizeof b, "%s/state.safetensors", dir);
    assert_same_bytes(a, b);
    fix_remove_run(dir);
}

static void child_case(int sig, const char *kill_after_row, int want_status) {
    child_case_n(sig, 1, kill_after_row, want_status);
}

// SIGINT after step 1 of epoch 0 was logged: the child finishes its step, saves, exits 130.
static void test_sigint_child(void **state) { child_case(SIGINT, "0,1,", 128 + SIGINT); }
// SIGKILL once epoch 1 runs (epoch 0's checkpoint is on disk): resume from that checkpoint.
// Two SIGINTs at once (two Ctrl-C, `timeout -s INT` signalling the process and its group):
// the second used to kill the process with the default action, losing the mid-epoch save.
static void test_two_sigints_child(void **state) { child_case_n(SIGINT, 2, "0,1,", 128 + SIGINT); }

// SIGINT during the calibration of a fresh run: exit 130, a message, nothing written; the
// next start calibrates again and finishes.
static void test_sigint_calibration(void **state) {
    char dir[64], cfg[128], err[128];
    snprintf(dir, sizeof dir, "/tmp/effdm_test_resume_cal_XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(cfg, sizeof cfg, "%s/run.yaml", dir);
    snprintf(err, sizeof err, "%s/stderr.txt", dir);
    RunConfig rc = base_rc;
    snprintf(rc.run.out, sizeof rc.run.out, "%s/run", dir);
    rc.calib.n_samples = 64;  // 32 batches of 2 trajectories: seconds to stop in
    rc.train.epochs = 1;
    Err e = {0};
    assert_int_equal(run_config_write(&rc, cfg, &e), 0);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 2);
        execl(EFFDM_BIN, EFFDM_BIN, "finetune", "--config", cfg, "--threads", "2", (char *)NULL);
        _exit(127);
    }
    int seen = 0;  // the trajectories' progress bar has started
    for (int i = 0; i < 20000 && !seen; i++) {
        unsigned char *b;
        size_t n;
        Err ig = {0};
        if (!file_read_all(err, &b, &n, &ig)) {
            b = realloc(b, n + 1);
            b[n] = 0;
            seen = strstr((char *)b, "teacher trajectories [") != NULL;
            free(b);
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (!seen) {
        kill(pid, SIGKILL);
        wait_exit(pid);
        unsigned char *b;
        size_t n;
        if (!file_read_all(err, &b, &n, &e)) fprintf(stderr, "%.*s\n", (int)n, (char *)b);
        fail_msg("no calibration progress seen");
    }
    kill(pid, SIGINT);
    assert_int_equal(wait_exit(pid), 128 + SIGINT);
    unsigned char *b;
    size_t n;
    assert_int_equal(file_read_all(err, &b, &n, &e), 0);
    b = realloc(b, n + 1);
    b[n] = 0;
    if (!strstr((char *)b, "stopped during calibration") || !strstr((char *)b, "nothing was written"))
        fail_msg("no message:\n%s", (char *)b);
    free(b);
    char path[256];
    snprintf(path, sizeof path, "%s/run/state.safetensors", dir);
    assert_int_not_equal(access(path, F_OK), 0);
    fix_remove_run(dir);
}

static void test_sigkill_child(void **state) { child_case(SIGKILL, "1,0,", 1000 + SIGKILL); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_mid_epoch),
        cmocka_unit_test(test_corrupt_state_falls_back),
        cmocka_unit_test(test_failed_force_calibration_keeps_dir),
        cmocka_unit_test(test_export_checks_out_first),
        cmocka_unit_test(test_resume_at_epoch_end),
        cmocka_unit_test(test_sigint_child),
        cmocka_unit_test(test_sigkill_child),
        cmocka_unit_test(test_two_sigints_child),
        cmocka_unit_test(test_sigint_calibration),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
