/* commands.h: entry points of the effdm subcommands (one file each: cli/cmd_<name>.c). */
#ifndef EFFDM_COMMANDS_H
#define EFFDM_COMMANDS_H

int cmd_calibrate(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_decode(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_compress(int argc, char **argv);

#endif
