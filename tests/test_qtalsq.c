/* test_qtalsq.c: TALSQ timestep tables: CompVis 'uniform' DDIM discretisation (the counts
   CompVis really produces: 31 steps for --steps 30) and the nearest-entry mapping of
   sampling timesteps to training entries (ties to the smaller timestep), against closed
   forms: 100 -> 20 (every 5th entry), 100 -> 50, 100 -> 31, 100 -> 100. */
#include "testutil.h"

#include "qalora/talsq.h"

static TalsqSchedule train, sample;  // large: keep them off the stack

static void map(int steps, int *entries, int *n) {
    Err e = {0};
    assert_int_equal(talsq_ddim_uniform(&train, 1000, 100, &e), 0);
    assert_int_equal(talsq_ddim_uniform(&sample, 1000, steps, &e), 0);
    talsq_map(&train, &sample, entries);
    *n = sample.n;
}

static void test_training_schedule(void **state) {
    Err e = {0};
    assert_int_equal(talsq_ddim_uniform(&train, 1000, 100, &e), 0);
    assert_int_equal(train.n, 100);
    assert_int_equal(train.timesteps[0], 1);
    assert_int_equal(train.timesteps[1], 11);
    assert_int_equal(train.timesteps[99], 991);
    assert_int_equal(talsq_ddim_uniform(&sample, 1000, 30, &e), 0);  // range(0, 1000, 33)
    assert_int_equal(sample.n, 31);
    assert_int_equal(sample.timesteps[30], 991);
    assert_int_equal(talsq_ddim_uniform(&sample, 1000, 250, &e), 0);
    assert_int_equal(sample.n, 250);
    assert_int_equal(sample.timesteps[249], 997);
    assert_int_equal(talsq_ddim_uniform(&sample, 1000, 1001, &e), ERR_VALUE);
    assert_int_equal(talsq_ddim_uniform(&sample, 1000, 0, &e), ERR_VALUE);
}

static void test_map_strides(void **state) {
    int ent[TALSQ_MAX_ENTRIES], n;
    map(20, ent, &n);
    assert_int_equal(n, 20);
    for (int i = 0; i < n; i++) assert_int_equal(ent[i], 5 * i);  // the reference's v[::5]
    map(50, ent, &n);
    assert_int_equal(n, 50);
    for (int i = 0; i < n; i++) assert_int_equal(ent[i], 2 * i);
    map(100, ent, &n);
    assert_int_equal(n, 100);
    for (int i = 0; i < n; i++) assert_int_equal(ent[i], i);
}

static void test_map_31(void **state) {
    // sampling t = 33 j + 1, training 10 i + 1: nearest i to 3.3 j, a tie (33 j = 10 i + 5,
    // j = 5, 15, 25) goes to the smaller timestep
    int ent[TALSQ_MAX_ENTRIES], n;
    map(30, ent, &n);
    assert_int_equal(n, 31);
    for (int j = 0; j < n; j++) assert_int_equal(ent[j], (33 * j + 4) / 10);
    assert_int_equal(ent[1], 3);    // 34 -> 31
    assert_int_equal(ent[2], 7);    // 67 -> 71
    assert_int_equal(ent[5], 16);   // 166: 161 and 171 tie -> 161
    assert_int_equal(ent[30], 99);  // 991
}

static void test_entry_edges(void **state) {
    Err e = {0};
    assert_int_equal(talsq_from_timesteps(&train, (const int[]){1, 11, 21}, 3, &e), 0);
    assert_int_equal(talsq_entry(&train, 0), 0);
    assert_int_equal(talsq_entry(&train, 6), 0);  // tie
    assert_int_equal(talsq_entry(&train, 7), 1);
    assert_int_equal(talsq_entry(&train, 16), 1);  // tie
    assert_int_equal(talsq_entry(&train, 999), 2);
    assert_int_equal(talsq_from_timesteps(&train, (const int[]){1, 11, 11}, 3, &e), ERR_VALUE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_training_schedule),
        cmocka_unit_test(test_map_strides),
        cmocka_unit_test(test_map_31),
        cmocka_unit_test(test_entry_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
