/* pack.h: integer weights packed into bytes, as the export stores them.

   Format (the one place it is defined): a tensor of n integer levels, each below 2^bits,
   in C order (a weight (Cout, Cin, kh, kw) flattened), packed as one little-endian bit
   stream: element i occupies bits [i c, (i + 1) c) of the stream, c = the container width,
   bit j of the stream being bit j % 8 of byte j / 8 (least significant first):
       4 bits: byte k = element 2k (low nibble) | element 2k+1 << 4
       2 bits: byte k = element 4k | 4k+1 << 2 | 4k+2 << 4 | 4k+3 << 6
       3 bits: 8 elements in 3 bytes; element i at bit 3i, crossing into the next byte when
               3i % 8 > 5 (elements 2 and 5 of each group of 8)
       8 bits: one element per byte
   Packing is flat over the whole tensor (rows are not padded to bytes); the unused high
   bits of the last byte are zero. Bit widths 5..7 are stored in bytes (container 8):
   pack_container_bits. (Exports of effdm.format "1" stored 3 bits in 4-bit containers;
   export_load reads them as such.)

       uint8_t buf[PACK_BYTES(n, 4)];
       pack_ints(buf, levels, n, 4);
       unpack_dequant(w, buf, 4, Cout, Cin * kh * kw, delta, zero);   // w = (q - z_c) Δ_c
*/
#ifndef EFFDM_PACK_H
#define EFFDM_PACK_H

#include <stddef.h>
#include <stdint.h>

// Bytes holding n elements of a container width (2, 3, 4 or 8 bits).
#define PACK_BYTES(n, bits) (((size_t)(n) * (size_t)(bits) + 7u) / 8u)

// Container width for a bit width 1..8: 2, 3, 4 or 8.
int pack_container_bits(int bits);
// Bytes for n levels of `bits` bits (in their container).
size_t pack_size(size_t n, int bits);
// Packs n levels (each < 2^bits; higher bits are dropped) into dst (pack_size bytes).
void pack_ints(uint8_t *dst, const uint8_t *src, size_t n, int bits);
// Unpacks n levels from src into dst (one per byte).
void unpack_ints(uint8_t *dst, const uint8_t *src, size_t n, int bits);
// Whole layer to float: y[r * row_len + j] = (level - zero[r]) * delta[r] for rows r
// (output channels) of row_len levels each.
void unpack_dequant(float *y, const uint8_t *src, int bits, int rows, size_t row_len, const float *delta,
                    const float *zero);

#endif
