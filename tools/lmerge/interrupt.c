/* SIGINT, SIGTERM and SIGHUP during `lmerge run` cancel the merge at the
 * next tensor, so the staging directory is removed and the destination
 * is left as it was; a second signal kills the process at once (its
 * staging directory, hidden, may then remain). */
#include <signal.h>
#include <string.h>

#include "commands.h"

/* A signal handler can only reach static storage; this is the tool's,
 * not the library's (which keeps no global state). */
static volatile sig_atomic_t received;

static void on_signal(int sig)
{
    received = sig;
}

void lmerge_interrupt_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* the second signal acts as the default */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

int lmerge_interrupted(void)
{
    return received;
}
