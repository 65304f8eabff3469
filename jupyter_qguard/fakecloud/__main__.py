from .command import main

# The guard matters: worker processes are spawned, and spawn imports the parent's main module.
if __name__ == "__main__":
    main()
