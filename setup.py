"""The optional compiled kernel (csrc/softmax_values.c, issue #22): built by ``pip install .`` where a C compiler
is present, skipped with a warning where it is not (``optional=True``; stabilitylab then runs its numpy path,
the same results bit for bit).  Everything else is in pyproject.toml."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """IEEE round-to-nearest arithmetic whatever the environment's flags say: gcc/clang get ``-O3`` (CFLAGS in
    the environment replace Python's own, -O3 included), no contraction into FMA, no fast-math (its flags are
    removed from the compile and link commands too: linking gcc's crtfastmath.o turns on flush to zero for the
    whole process; the module also refuses to load if it finds that on); ``-fno-trapping-math`` (after
    ``-fno-fast-math``, which would turn trapping back on) only lets the compiler compute both sides of a select,
    which changes no value, so that the loops vectorize.  Always rebuilt (``force``): a stale object in ``build/``
    is never installed."""

    UNSAFE = ("-ffast-math", "-Ofast", "-funsafe-math-optimizations", "-ffinite-math-only", "-fno-signed-zeros",
              "-freciprocal-math", "-fassociative-math")

    def build_extensions(self):
        self.force = True
        if self.compiler.compiler_type == "unix":
            for name in ("compiler_so", "linker_so", "compiler", "linker_exe"):
                command = getattr(self.compiler, name, None)
                if command:
                    setattr(self.compiler, name, [a for a in command if a not in self.UNSAFE])
            for ext in self.extensions:
                ext.extra_compile_args += ["-O3", "-fno-fast-math", "-ffp-contract=off", "-fno-trapping-math"]
        super().build_extensions()


setup(ext_modules=[Extension("_stabilitylab_kernels", ["csrc/softmax_values.c"], optional=True)],
      cmdclass={"build_ext": BuildExt})
