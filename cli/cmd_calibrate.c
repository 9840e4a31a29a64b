/* cmd_calibrate.c: effdm calibrate (not implemented yet: says so, exit 2). */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"

int cmd_calibrate(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: effdm calibrate ...\n\n'effdm calibrate' is not implemented yet in this version.\n");
        return 0;
    }
    fprintf(stderr, "effdm calibrate: not implemented yet in this version\n");
    return 2;
}
