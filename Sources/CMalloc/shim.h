// glibc's malloc.h: malloc_trim, to hand freed arena memory back to the kernel.
#include <malloc.h>
