/* ticker TICKS: waits until a file "go" exists in its directory (looking every 200 ms,
 * a local sleep between looks), then prints "i checksum" TICKS times, 20 ms apart, and
 * "done". Small and mostly asleep, so a hundred of them can move at once on two CPUs;
 * the output depends on nothing but TICKS. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000 * 1000};
    nanosleep(&ts, 0);
}

int main(int argc, char **argv)
{
    int ticks = argc > 1 ? atoi(argv[1]) : 100;
    while (access("go", F_OK) != 0)
        nap(200);
    unsigned long sum = 0;
    for (int i = 0; i < ticks; i++) {
        for (int j = 0; j < 1000; j++)
            sum = sum * 6364136223846793005UL + (unsigned long)(i ^ j);
        printf("%d %lu\n", i, sum);
        fflush(stdout);
        nap(20);
    }
    printf("done\n");
    return 0;
}
