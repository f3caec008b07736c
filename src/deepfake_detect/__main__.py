from deepfake_detect.cli import main

main()
