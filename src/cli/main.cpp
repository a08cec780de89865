// Temporary entry point while the subcommands are being built (replaced by the CLI module).
#include <cstdio>
int main() { std::puts("fp4q " FP4Q_VERSION); return 0; }
