# GPAW build configuration used by install/install.sh (GPAW_CONFIG=...).
# GPAW >= 24 compiles its C sources as C++; without an MPI compiler wrapper on
# PATH the default build picks gcc and fails ("algorithm: No such file").
# Serial build against Debian's libxc, OpenBLAS and FFTW3.
mpi = False
compiler = 'g++'
libraries += ['blas']
fftw = True
libraries += ['fftw3']
