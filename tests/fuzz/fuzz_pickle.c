/* fuzz_pickle.c: the pickle parser alone (io/pickle.c) on a data.pkl from memory, then a
   walk of the top-level dict as ckpt does. Replay: build/fuzz_pickle_replay FILE|DIR. */
#include <stdint.h>

#include "io/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    PklDoc d;
    Err e = {0};
    if (pkl_parse(&d, data, size, "fuzz.pkl", &e) == 0) {
        const PklValue *sd = pkl_dict_get(d.root, "state_dict");
        const PklValue *src = sd && sd->type == PKL_DICT ? sd : d.root;
        volatile size_t dims = 0;
        if (src->type == PKL_DICT)
            for (size_t i = 0; i < src->u.dict.n; i++)
                if (src->u.dict.vals[i]->type == PKL_TENSOR) dims += (size_t)src->u.dict.vals[i]->u.tensor.ndim;
        (void)dims;
    }
    pkl_free(&d);
    return 0;
}
