#include "util/grow.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>

int grow_array(void **arr, int *cap, int need, int first, size_t elsize) {
    if (need <= *cap) return 0;
    long long n = *cap > 0 ? *cap : (first > 0 ? first : 1);
    while (n < need) n *= 2;
    if (n > INT_MAX || (size_t)n > SIZE_MAX / elsize) return -1;
    void *a = realloc(*arr, (size_t)n * elsize);
    if (!a) return -1;
    *arr = a;
    *cap = (int)n;
    return 0;
}
