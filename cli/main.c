/* main.c: the effdm command table and dispatcher (as git.c's commands[] / run_builtin). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "util/dist.h"
#include "util/err.h"
#include "util/threads.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} Command;

static const Command commands[] = {
    {"calibrate", cmd_calibrate, "naive PTQ: collect calibration inputs, initialise quantizer ranges"},
    {"finetune", cmd_finetune, "EfficientDM fine-tuning (QALoRA + TALSQ distillation), resumable"},
    {"export", cmd_export, "merge LoRA, pack integer weights into one .safetensors"},
    {"compress", cmd_compress, "prune FeedForward units and attention heads, UDFC reconstruction (a smaller checkpoint)"},
    {"sample", cmd_sample, "generate images (DDIM/PLMS, classifier-free guidance)"},
    {"stats", cmd_stats, "feature statistics of an image set (FID reference)"},
    {"eval", cmd_eval, "FID, IS, precision/recall, class accuracy of samples"},
    {"plot", cmd_plot, "training curves of a run (log.csv) as a PNG"},
    {"compare", cmd_compare, "two sample folders of the same seeds: pixel RMSE, judge agreement, FIDs"},
    {"info", cmd_info, "what a checkpoint, safetensors file or export holds"},
    {"forward", cmd_forward, "raw UNet output on .npy inputs (conversion checks)"},
    {"decode", cmd_decode, "raw first-stage decode of .npy latents (conversion checks)"},
};

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: effdm <command> [options]     (effdm <command> --help for its options)\n\n"
            "effdm turns latent-diffusion checkpoints into 4-bit models with EfficientDM,\n"
            "samples and evaluates them, on the CPU.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(fp, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(fp,
            "\nthreads: the computing commands take --threads N (default: $EFFDM_THREADS, else all cores)\n"
            "exit status: 0 success, 2 bad input (arguments, files, configs), 1 other failure\n");
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return cli_close_stdout();
    }
    if (!strcmp(argv[1], "--version")) {
        printf("effdm %s\n", EFFDM_VERSION);
        return cli_close_stdout();
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) != 0) continue;
        // MPI starts only under mpirun; only finetune shares its work among ranks
        Err e = {0};
        if (dist_init(&argc, &argv, &e)) {
            const char *r = getenv("OMPI_COMM_WORLD_RANK");  // one message for the job
            if (!r || !strcmp(r, "0")) fprintf(stderr, "effdm %s: %s\n", argv[1], e.msg);
            return err_exit_status(e.code);
        }
        if (dist_size() > 1 && strcmp(argv[1], "finetune") != 0) {
            if (dist_rank() == 0)
                fprintf(stderr, "effdm %s: started by mpirun with %d ranks: only effdm finetune runs on several "
                        "ranks (run this command without mpirun)\n", argv[1], dist_size());
            dist_finalize();
            return 2;
        }
        int rc = commands[i].fn(argc - 1, argv + 1);
        int out = cli_close_stdout();
        dist_finalize();
        return rc ? rc : out;
    }
    fprintf(stderr, "effdm: '%s' is not an effdm command (see effdm --help)\n", argv[1]);
    return 2;
}
