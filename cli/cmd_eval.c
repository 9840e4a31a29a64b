/* cmd_eval.c: effdm eval (not implemented yet: says so, exit 2). */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"

int cmd_eval(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: effdm eval ...\n\n'effdm eval' is not implemented yet in this version.\n");
        return 0;
    }
    fprintf(stderr, "effdm eval: not implemented yet in this version\n");
    return 2;
}
