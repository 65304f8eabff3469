"""Code that runs inside agent kernels. It never imports broker or credential code: all it
can do is ask the broker over the kernel's own channel."""
