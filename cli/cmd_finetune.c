/* cmd_finetune.c: effdm finetune (not implemented yet: says so, exit 2). */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"

int cmd_finetune(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: effdm finetune ...\n\n'effdm finetune' is not implemented yet in this version.\n");
        return 0;
    }
    fprintf(stderr, "effdm finetune: not implemented yet in this version\n");
    return 2;
}
