from hippo_scp.cli import main

if __name__ == "__main__":
    main()
