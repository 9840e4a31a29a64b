/* test_pack.c: integer packing: the documented bit order on hand-packed bytes (and, for the
   3-bit stream, against a bit-by-bit reference), round trips for 2/3/4/8 bits on odd lengths,
   zero padding, containers for other widths, and unpacking a whole layer to float against
   the closed form (level - z_c) Δ_c. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "qalora/pack.h"

static void test_bit_order(void **state) {
    // 4 bits: element 2k in the low nibble
    uint8_t b4[2];
    pack_ints(b4, (const uint8_t[]){0x1, 0x2, 0xF}, 3, 4);
    assert_int_equal(b4[0], 0x21);
    assert_int_equal(b4[1], 0x0F);  // the unused high nibble is zero
    // 2 bits: element 4k in the lowest two bits
    uint8_t b2[2];
    pack_ints(b2, (const uint8_t[]){1, 2, 3, 0, 1}, 5, 2);
    assert_int_equal(b2[0], 1 | 2 << 2 | 3 << 4);
    assert_int_equal(b2[1], 0x01);
    uint8_t b8[3];
    pack_ints(b8, (const uint8_t[]){7, 200, 255}, 3, 8);
    assert_int_equal(b8[1], 200);
    // 3 bits: 8 levels in 3 bytes, element i at bit 3i; 1..7 then 5 give
    // bits 001 010 011 100 101 110 111 101 from bit 0 up (hand-packed)
    uint8_t b3[4];
    pack_ints(b3, (const uint8_t[]){1, 2, 3, 4, 5, 6, 7, 5, 6}, 9, 3);
    assert_int_equal(b3[0], 0xD1);  // 1 | 2 << 3 | (3 & 3) << 6
    assert_int_equal(b3[1], 0x58);  // 3 >> 2 | 4 << 1 | 5 << 4 | (6 & 1) << 7
    assert_int_equal(b3[2], 0xBF);  // 6 >> 1 | 7 << 2 | 5 << 5
    assert_int_equal(b3[3], 0x06);  // element 8; the unused high bits are zero
}

// Bit j of the stream is bit j % 8 of byte j / 8 (pack.h), element i holds bits [3i, 3i + 3):
// the format read one bit at a time, independent of pack.c's byte arithmetic.
static unsigned ref_get3(const uint8_t *p, size_t i) {
    unsigned v = 0;
    for (int b = 0; b < 3; b++) {
        size_t j = 3 * i + (size_t)b;
        v |= (unsigned)((p[j / 8] >> (j % 8)) & 1u) << b;
    }
    return v;
}

static void test_three_bit_stream(void **state) {
    Rng r;
    rng_seed(&r, 10, 0);
    for (size_t n = 1; n <= 41; n++) {
        uint8_t src[41], pk[16], back[41];
        for (size_t i = 0; i < n; i++) src[i] = (uint8_t)rng_below(&r, 8);
        pack_ints(pk, src, n, 3);
        assert_int_equal(pack_size(n, 3), (3 * n + 7) / 8);
        for (size_t i = 0; i < n; i++) assert_int_equal(ref_get3(pk, i), src[i]);
        for (size_t j = 3 * n; j < 8 * pack_size(n, 3); j++) assert_int_equal((pk[j / 8] >> (j % 8)) & 1, 0);
        unpack_ints(back, pk, n, 3);
        assert_memory_equal(src, back, n);
    }
    assert_int_equal(pack_size(1000, 3) * 4, pack_size(1000, 4) * 3);  // a W3 tensor is 3/4 of a W4 one
}

static void test_round_trips(void **state) {
    const size_t lens[] = {1, 2, 3, 7, 13, 1001};
    const int bits[] = {2, 3, 4, 5, 8};
    Rng r;
    rng_seed(&r, 9, 0);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        for (size_t bi = 0; bi < sizeof bits / sizeof bits[0]; bi++) {
            size_t n = lens[li];
            int b = bits[bi];
            uint8_t *src = malloc(n), *dst = malloc(n), *pk = malloc(n + 1);
            for (size_t i = 0; i < n; i++) src[i] = (uint8_t)rng_below(&r, 1u << b);
            size_t sz = pack_size(n, b);
            assert_int_equal(sz, (n * (size_t)pack_container_bits(b) + 7) / 8);
            memset(pk, 0xAA, n + 1);
            pack_ints(pk, src, n, b);
            assert_int_equal(pk[sz], 0xAA);  // nothing written past pack_size
            unpack_ints(dst, pk, n, b);
            assert_memory_equal(src, dst, n);
            free(src);
            free(dst);
            free(pk);
        }
    }
    assert_int_equal(pack_container_bits(3), 3);
    assert_int_equal(pack_container_bits(6), 8);
    assert_int_equal(pack_size(7, 4), 4);
    assert_int_equal(pack_size(5, 2), 2);
}

static void test_unpack_dequant(void **state) {
    const int rows = 3;
    const size_t len = 5;  // odd: rows start mid-byte
    uint8_t lv[15], pk[8];
    for (int i = 0; i < 15; i++) lv[i] = (uint8_t)((i * 7) % 16);
    pack_ints(pk, lv, 15, 4);
    const float delta[3] = {0.5f, 0.25f, 2.0f}, zero[3] = {8.0f, 3.0f, 0.0f};
    float y[15];
    unpack_dequant(y, pk, 4, rows, len, delta, zero);
    for (int r = 0; r < rows; r++)
        for (size_t j = 0; j < len; j++)
            assert_float_equal(y[r * len + j], ((float)lv[r * len + j] - zero[r]) * delta[r], 0.0f);
    uint8_t pk2[4];
    uint8_t lv2[15];
    for (int i = 0; i < 15; i++) lv2[i] = (uint8_t)(i % 4);
    pack_ints(pk2, lv2, 15, 2);
    unpack_dequant(y, pk2, 2, rows, len, delta, zero);
    for (int i = 0; i < 15; i++) assert_float_equal(y[i], ((float)lv2[i] - zero[i / 5]) * delta[i / 5], 0.0f);
    uint8_t pk3[6], lv3[15];
    for (int i = 0; i < 15; i++) lv3[i] = (uint8_t)((i * 5) % 8);
    pack_ints(pk3, lv3, 15, 3);
    unpack_dequant(y, pk3, 3, rows, len, delta, zero);
    for (int i = 0; i < 15; i++) assert_float_equal(y[i], ((float)lv3[i] - zero[i / 5]) * delta[i / 5], 0.0f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bit_order),
        cmocka_unit_test(test_three_bit_stream),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_unpack_dequant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
