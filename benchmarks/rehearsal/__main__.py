from benchmarks.rehearsal.cli import main

main()
