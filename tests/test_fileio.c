/* test_fileio.c: io/fileio.h's atomic writes: the file appears only when complete, a failed
   write names the error that happened (not whatever errno holds by commit time), and the
   temporary file is removed. */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "io/fileio.h"

static char dir[256];

static int setup(void **state) { return test_tmpdir_make(dir, sizeof dir, "fileio"); }
static int teardown(void **state) { return test_tmpdir_remove(dir); }

static void test_commit(void **state) {
    char path[300], tmp[320];
    snprintf(path, sizeof path, "%s/a.bin", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    AtomicFile f;
    Err e = {0};
    assert_int_equal(atomic_open(&f, path, &e), 0);
    atomic_write(&f, "hello", 5);
    assert_int_not_equal(access(path, F_OK), 0);  // not there before the commit
    assert_int_equal(atomic_commit(&f, &e), 0);
    unsigned char *b;
    size_t n;
    assert_int_equal(file_read_all(path, &b, &n, &e), 0);
    assert_true(n == 5 && !memcmp(b, "hello", 5));
    free(b);
    assert_int_not_equal(access(tmp, F_OK), 0);
}

// A write that fails with EFBIG (a file size limit), then an unrelated call that sets
// errno to ENOENT: the commit must report "File too large". It used to print the errno of
// the last call before it (here "No such file or directory").
static void test_failed_write_names_its_error(void **state) {
    char path[300], tmp[320];
    snprintf(path, sizeof path, "%s/big.bin", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of the signal
    AtomicFile f;
    Err e = {0};
    assert_int_equal(atomic_open(&f, path, &e), 0);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    static char block[1 << 16];
    atomic_write(&f, block, sizeof block);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_not_equal(access("/nonexistent/effdm", F_OK), 0);  // errno = ENOENT now
    assert_int_equal(atomic_commit(&f, &e), ERR_IO);
    if (!strstr(e.msg, strerror(EFBIG))) fail_msg("message: %s", e.msg);
    assert_int_not_equal(access(path, F_OK), 0);
    assert_int_not_equal(access(tmp, F_OK), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit),
        cmocka_unit_test(test_failed_write_names_its_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
