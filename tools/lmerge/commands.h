/* Subcommands of lmerge; each returns the process exit code. */
#ifndef LMERGE_COMMANDS_H
#define LMERGE_COMMANDS_H

#include <libmerge.h>
#include <libmerge/sys/strategy.h>

int lmerge_demo(int argc, char **argv);
int lmerge_methods(int argc, char **argv);

#endif
