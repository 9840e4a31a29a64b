/* test_mpi.c: data-parallel fine-tuning over MPI ranks (util/dist.h, train/distill_step.c).
   Runs the effdm binary: one process, and `mpirun -np 2` (Open MPI, as root with
   --allow-run-as-root --oversubscribe), on the same tiny run config (shipped teacher, W4A4,
   batch 3 so the ranks hold 2 and 1 trajectories). Checks:
   - the 2-rank run writes calib, state and best files byte-identical to the single process
     (and the same log rows, wall times aside), with uniform quantizers and with the default
     config's (EasyQuant weights, per-token activation ranges);
   - SIGKILL of one rank ends the job with a message and a non-zero status; the run
     directory then resumes, on 1 rank, to the same final state as the uninterrupted run. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/fileio.h"

#define ROOT TEST_DATA_DIR "/../.."

static char tmp[64], cfg[128];

// quant: extra quant keys ("" or ", key: value ...").
static void write_config(const char *path, const char *quant) {
    test_write_file(path,
                    "model:\n  ldm_config: %s/models/zoo/fmnist-ldm/config.yaml\n  ckpt: %s/models/zoo/fmnist-ldm/model.ckpt\n"
                    "quant: {weight_bits: 4, act_bits: 4, fp_layers: f16%s}\n"
                    "calib: {steps: 10, n_samples: 4, batch: 2, n_inputs: 8}\n"
                    "train:\n  recipe: effdm\n  epochs: 4\n  steps: 4\n  batch: 3\n  val_every: 1\n  val_inputs: 6\n"
                    "  val_samples: 0\n  sample_every: 0\n  guidance_gain: off\n  checkpoint_every: 1\n"
                    "run: {arena_mb: 512}\n",
                    ROOT, ROOT, quant);
}

// Starts `[mpirun -np np] effdm finetune ARGS...` with stderr to err_path; returns the pid.
static pid_t spawn(int np, const char *err_path, const char *const *args) {
    const char *argv[32];
    int n = 0;
    char nps[16];
    snprintf(nps, sizeof nps, "%d", np);
    if (np > 0) {
        const char *pre[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", nps};
        for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++) argv[n++] = pre[i];
    }
    argv[n++] = EFFDM_BIN;
    argv[n++] = "finetune";
    for (int i = 0; args[i]; i++) argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        setenv("ASAN_OPTIONS", "detect_leaks=0", 1);  // Open MPI's own allocations at exit
        setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) return 1000 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static int run(int np, const char *out, const char *threads) {
    char set[200], err[200];
    snprintf(set, sizeof set, "run.out=%s", out);
    snprintf(err, sizeof err, "%s.err", out);
    const char *args[] = {"--config", cfg, "--set", set, "--threads", threads, NULL};
    int rc = wait_exit(spawn(np, err, args));
    if (rc) {
        unsigned char *b;
        size_t n;
        Err e = {0};
        if (!file_read_all(err, &b, &n, &e)) fprintf(stderr, "%.*s\n", (int)n, b);
    }
    return rc;
}

static void assert_same_file(const char *a_dir, const char *b_dir, const char *name) {
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/%s", a_dir, name);
    snprintf(b, sizeof b, "%s/%s", b_dir, name);
    unsigned char *pa, *pb;
    size_t na, nb;
    Err e = {0};
    if (file_read_all(a, &pa, &na, &e) || file_read_all(b, &pb, &nb, &e)) fail_msg("%s", e.msg);
    if (na != nb || memcmp(pa, pb, na)) fail_msg("%s and %s differ", a, b);
    free(pa);
    free(pb);
}

// log.csv with the seconds column (the 5th) blanked.
static char *log_rows(const char *dir) {
    char path[256];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *out = calloc(1, 1 << 20), line[512];
    size_t len = 0;
    while (fgets(line, sizeof line, f)) {
        int field = 0;
        for (char *p = line; *p && len < (1 << 20) - 2; p++) {
            if (*p == ',') field++;
            if (field == 4 && *p != ',') continue;
            out[len++] = *p;
        }
    }
    fclose(f);
    return out;
}

static char ref[128];

static int setup(void **state) {
    snprintf(tmp, sizeof tmp, "/tmp/effdm_test_mpi_XXXXXX");
    if (!mkdtemp(tmp)) return -1;
    snprintf(cfg, sizeof cfg, "%s/run.yaml", tmp);
    write_config(cfg, "");
    snprintf(ref, sizeof ref, "%s/one", tmp);
    return run(0, ref, "2");  // the reference: one process, 2 threads
}

static int teardown(void **state) {
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (getenv("EFFDM_TEST_KEEP")) return 0;
    return system(cmd) == 0 ? 0 : -1;
}

// Run directories one and two hold the same calib, state and best files and log rows.
static void assert_same_run(const char *one, const char *two) {
    assert_same_file(one, two, "calib.safetensors");
    assert_same_file(one, two, "state.safetensors");
    assert_same_file(one, two, "best.safetensors");
    char *a = log_rows(one), *b = log_rows(two);
    assert_string_equal(a, b);
    free(a);
    free(b);
}

static void test_two_ranks_match_one_process(void **state) {
    char two[128];
    snprintf(two, sizeof two, "%s/two", tmp);
    assert_int_equal(run(2, two, "1"), 0);
    assert_same_run(ref, two);
}

/* The same with the default W4A4 config's quantizers (EasyQuant weights, per-token activation
   ranges): their gradients (the side table's, the clipping ratios') sum over ranks as the others. */
static void test_two_ranks_match_one_process_token(void **state) {
    char one[128], two[128], cfg_tok[128];
    snprintf(cfg_tok, sizeof cfg_tok, "%s/run_tok.yaml", tmp);
    write_config(cfg_tok, ", weight_quantizer: easyquant, act_granularity: token");
    snprintf(one, sizeof one, "%s/one_tok", tmp);
    snprintf(two, sizeof two, "%s/two_tok", tmp);
    snprintf(cfg, sizeof cfg, "%s", cfg_tok);
    int r1 = run(0, one, "2"), r2 = run(2, two, "1");
    snprintf(cfg, sizeof cfg, "%s/run.yaml", tmp);
    assert_int_equal(r1, 0);
    assert_int_equal(r2, 0);
    assert_same_run(one, two);
}

// The children of process `parent` (mpirun's: its ranks).
static int children(pid_t parent, pid_t *out, int cap) {
    DIR *d = opendir("/proc");
    assert_non_null(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)) && n < cap) {
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = '\0';
        char *close = strrchr(buf, ')');
        int ppid = 0;
        char st;
        if (close && sscanf(close + 2, "%c %d", &st, &ppid) == 2 && ppid == parent)
            out[n++] = (pid_t)atoi(de->d_name);
    }
    closedir(d);
    return n;
}

static void test_sigkill_one_rank_then_resume(void **state) {
    char dir[128], set[200], err[200], path[256];
    snprintf(dir, sizeof dir, "%s/killed", tmp);
    snprintf(set, sizeof set, "run.out=%s", dir);
    snprintf(err, sizeof err, "%s.err", dir);
    const char *args[] = {"--config", cfg, "--set", set, "--threads", "1", NULL};
    pid_t pid = spawn(2, err, args);
    // wait for the first checkpoint (state.json is written right after state.safetensors of
    // epoch 1), then kill rank 1
    snprintf(path, sizeof path, "%s/state.json", dir);
    int seen = 0;
    for (int i = 0; i < 60000 && !seen; i++) {
        seen = access(path, F_OK) == 0;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) fail_msg("mpirun ended before the first checkpoint");
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(seen);
    pid_t kids[8];
    int nk = children(pid, kids, 8);
    assert_int_equal(nk, 2);
    kill(kids[1], SIGKILL);
    int rc = wait_exit(pid);
    assert_true(rc != 0);
    unsigned char *b;
    size_t n;
    Err e = {0};
    assert_int_equal(file_read_all(err, &b, &n, &e), 0);
    b = realloc(b, n + 1);
    b[n] = '\0';
    if (!strstr((char *)b, "signal 9") && !strstr((char *)b, "Killed"))
        fail_msg("no message naming the killed rank:\n%s", (char *)b);
    free(b);
    // resume on one process (another rank count): the same final files as uninterrupted
    const char *resume[] = {"--resume", dir, "--threads", "2", NULL};
    snprintf(err, sizeof err, "%s.resume.err", dir);
    assert_int_equal(wait_exit(spawn(0, err, resume)), 0);
    assert_same_file(ref, dir, "state.safetensors");
    assert_same_file(ref, dir, "best.safetensors");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_ranks_match_one_process),
        cmocka_unit_test(test_two_ranks_match_one_process_token),
        cmocka_unit_test(test_sigkill_one_rank_then_resume),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
